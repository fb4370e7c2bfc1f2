"""The periodic workflow: stress labels, NPT with a pure-ML periodic system, classical pre-sampling."""

# No `from __future__ import annotations`: the stand-in model below is a torch module with
# annotations TorchScript would read if it were scripted (it runs eagerly through PythonForce).

import json

import numpy as np
import pytest
import torch
from torch import Tensor

from mlsim import units
from mlsim.data import Structure

openmm = pytest.importorskip("openmm")
models = pytest.importorskip("mlsim.models")

from mlsim.ase import MLCalculator  # noqa: E402
from mlsim.openmm import create_system, run_md  # noqa: E402

torch.set_num_threads(1)


def copper(rattle: float = 0.05, seed: int = 0) -> Structure:
    """A rattled, slightly sheared 2x2x2 fcc Cu cell (32 atoms): a stress with all six components."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(rattle, seed=seed)
    cell = atoms.cell.array.copy()
    cell[1, 0] += 0.1  # shear: off-diagonal stress
    atoms.set_cell(cell, scale_atoms=True)
    return Structure.from_atoms(atoms)


def finite_strain_stress(s: Structure, calc, h: float = 1e-5) -> np.ndarray:
    """sigma_ij = (1/V) dE/d(eps_ij) by central differences of symmetric strains (eV/A^3)."""
    atoms = s.to_atoms()
    atoms.calc = calc
    volume = atoms.get_volume()
    cell0, pos0 = atoms.cell.array.copy(), atoms.positions.copy()
    out = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            e = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[i, j] += sign * h / 2
                eps[j, i] += sign * h / 2
                deform = np.eye(3) + eps
                atoms.set_cell(cell0 @ deform, scale_atoms=False)
                atoms.positions = pos0 @ deform
                e.append(atoms.get_potential_energy())
            out[i, j] = out[j, i] = (e[0] - e[1]) / (2 * h) / volume
    return out


def test_ase_labeller_stress_matches_finite_strain(tmp_path):
    """EMT's stress through mlsim's labeller is dE/d(strain)/V, and it reaches the labelled file."""
    from ase.calculators.emt import EMT

    from mlsim.data import read
    from mlsim.data._backends import AseLabeller
    from mlsim.data._label import label

    s = copper()
    energy, forces, info = AseLabeller(EMT())(s)
    stress = info["stress"]
    assert stress.shape == (3, 3) and np.abs(stress).max() > 1e-4  # a real, nonzero stress
    assert np.abs(stress[0, 1]) > 1e-5  # the shear shows up off the diagonal
    np.testing.assert_allclose(stress, finite_strain_stress(s, EMT()), atol=2e-7)
    # A molecule (no cell) gets no stress at all.
    from ase.build import molecule

    assert "stress" not in AseLabeller(EMT())(Structure.from_atoms(molecule("CO")))[2]
    # Through `mlsim label`: the stress is the Structure's label in the output file.
    label([s, copper(seed=1)], tmp_path / "cu.extxyz", AseLabeller(EMT()), progress=False)
    back = read(tmp_path / "cu.extxyz")
    assert back[0].stress is not None
    np.testing.assert_allclose(back[0].stress, stress, rtol=1e-6, atol=1e-12)
    assert back.stats()["n_with_stress"] == 2


def test_ase_sampling_keeps_the_stress_of_periodic_frames():
    from ase.calculators.emt import EMT

    from mlsim.data import sample

    ds = sample(copper(), EMT(), [300.0], 2, every=2, equilibration_fs=2.0, progress=False)
    for s in ds:
        assert s.stress is not None and s.energy is not None
        atoms = s.to_atoms()
        atoms.calc = EMT()
        np.testing.assert_allclose(s.stress, atoms.get_stress(voigt=False), atol=1e-10)


def water_box(n_side: int = 2, spacing: float = 3.1, seed: int = 0) -> Structure:
    """n_side^3 randomly oriented waters on a cubic lattice (~1 g/cm^3), periodic (O H H order)."""
    from ase.build import molecule
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    w = molecule("H2O")
    w = w[[int(np.flatnonzero(w.numbers == 8)[0]), *np.flatnonzero(w.numbers == 1)]]
    pos = []
    for a in range(n_side):
        for b in range(n_side):
            for c in range(n_side):
                rot = Rotation.random(random_state=rng).as_matrix()
                pos.append(w.positions @ rot.T + spacing * (np.array([a, b, c]) + 0.5))
    nums = [8, 1, 1] * n_side**3
    cell = np.eye(3) * spacing * n_side
    return Structure(numbers=nums, positions=np.concatenate(pos), cell=cell, pbc=True)


def painn(seed: int = 0) -> torch.nn.Module:
    """A small freshly initialised float64 PaiNN for H and O, scripted."""
    torch.manual_seed(seed)
    m = models.PaiNNModel([1, 8], cutoff=4.0, features=16, num_interactions=2).double()
    return torch.jit.script(m.eval())


@pytest.mark.parametrize("backend", ["torch", "python"])
def test_mlsim_force_follows_box_changes(backend):
    """What the barostat does (scale box and positions) reaches the model: energy = ASE's."""
    model = painn()
    s = water_box()
    system = create_system(model, s, backend=backend)
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU")
    )
    for scale in (1.0, 1.03, 0.97):
        scaled = Structure(s.numbers, s.positions * scale, s.cell * scale, True)
        ctx.setPeriodicBoxVectors(*units.positions_to_openmm(scaled.cell))
        ctx.setPositions(units.positions_to_openmm(scaled.positions))
        e_mm = units.energy_from_openmm(ctx.getState(getEnergy=True).getPotentialEnergy()._value)
        atoms = scaled.to_atoms()
        atoms.calc = MLCalculator(model)
        assert float(e_mm) == pytest.approx(atoms.get_potential_energy(), rel=1e-6)


class LennardJonesArgon(torch.nn.Module):
    """Test-only periodic stand-in with the mlsim model contract: Lennard-Jones argon (eV, A).

    Minimum-image pairs (cells wider than 2 x cutoff), energy switched smoothly to zero between
    r_on and the cutoff, so NPT dynamics of solid argon is physical and stable.
    """

    def __init__(self, epsilon: float = 0.0104, sigma: float = 3.4, cutoff: float = 7.0) -> None:
        super().__init__()
        self.elements = [18]
        self.cutoff = cutoff
        self.epsilon, self.sigma, self.r_on = epsilon, sigma, cutoff - 1.0
        self.register_buffer("dummy", torch.zeros(1, dtype=torch.float64))

    def forward(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> Tensor:
        """Energy (eV) of one periodic structure."""
        box = cell[0]
        n = positions.shape[0]
        i, j = torch.triu_indices(n, n, 1)
        d = positions[j] - positions[i]
        frac = torch.linalg.solve(box.T, d.T).T
        d = (frac - torch.round(frac)) @ box
        r = torch.sqrt((d * d).sum(1))
        sr6 = (self.sigma / r) ** 6
        e = 4 * self.epsilon * (sr6 * sr6 - sr6)
        x = ((r - self.r_on) / (self.cutoff - self.r_on)).clamp(0.0, 1.0)
        e = e * (1 - x**3 * (10 - 15 * x + 6 * x**2))
        return e.sum().reshape(1)


def argon_crystal() -> Structure:
    """108 argon atoms, fcc at a = 5.26 A (15.8 A box)."""
    from ase.build import bulk

    return Structure.from_atoms(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3))


def test_pure_ml_npt_moves_the_box_and_stays_consistent(tmp_path):
    """run_md ensemble='npt' with a periodic ML model: the box changes, energies stay the model's."""
    model = LennardJonesArgon()
    res = run_md(
        model,
        argon_crystal(),
        tmp_path,
        steps=600,
        timestep_fs=5.0,
        temperature_k=40.0,
        ensemble="npt",
        pressure_bar=1.0,
        barostat_interval=10,
        backend="python",
        report_interval=50,
        seed=4,
        progress=False,
    )
    rows = np.genfromtxt(res.log, delimiter=",", names=True)
    assert len(np.unique(rows["Box_Volume_nm3"])) > 3
    meta = json.loads(res.metadata.read_text())
    assert meta["ensemble"] == "npt" and meta["barostat_interval_steps"] == 10
    # The final state's energy is the model's energy at the final positions in the final box.
    state = openmm.XmlSerializer.deserialize(res.final_state.read_text())
    box = units.positions_from_openmm(np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value))
    pos = units.positions_from_openmm(np.asarray(state.getPositions(asNumpy=True)._value))
    assert not np.allclose(box, argon_crystal().cell)
    atoms = Structure(np.full(len(pos), 18), pos, box, True).to_atoms()
    atoms.calc = MLCalculator(model)
    e_state = units.energy_from_openmm(state.getPotentialEnergy()._value)
    assert float(e_state) == pytest.approx(atoms.get_potential_energy(), rel=1e-9)
    # No self energies in this model: the relative and absolute columns agree.
    np.testing.assert_allclose(
        rows["Potential_Energy_kJmole"], rows["Absolute_Potential_Energy_kJmole"]
    )


def test_npt_needs_a_periodic_structure(tmp_path):
    from ase.build import molecule

    with pytest.raises(ValueError, match="fully periodic"):
        run_md(
            LennardJonesArgon(),
            Structure.from_atoms(molecule("H2O")),
            tmp_path,
            10,
            ensemble="npt",
            progress=False,
        )


def test_md_cli_npt_on_a_periodic_structure(tmp_path, capsys):
    from mlsim.cli import main

    path = tmp_path / "model.pt"
    torch.manual_seed(0)
    eager = models.PaiNNModel([1, 8], cutoff=3.0, features=8, num_interactions=1)
    models.save_model(eager, path, spec={"architecture": "painn", "elements": [1, 8]})
    water_box().to_atoms().write(tmp_path / "box.extxyz")
    args = [
        "md",
        str(path),
        "--structure",
        str(tmp_path / "box.extxyz"),
        "-o",
        str(tmp_path / "md"),
    ]
    args += ["--ensemble", "npt", "--pressure", "1.0", "--steps", "50", "--report-interval", "25"]
    args += ["--no-geometry-check", "--no-progress", "--seed", "1"]
    assert main(args) == 0
    rows = np.genfromtxt(tmp_path / "md" / "state.csv", delimiter=",", names=True)
    assert list(rows["Step"]) == [25, 50] and np.isfinite(rows["Density_gmL"]).all()


def test_openmm_presampling_of_flexible_water(tmp_path, capsys):
    """`mlsim data sample --engine openmm`: unlabelled frames of flexible TIP3P-FB water."""
    from mlsim.cli import main
    from mlsim.data import read

    water_box(n_side=4).to_atoms().write(tmp_path / "box.extxyz")
    out = tmp_path / "frames.extxyz"
    args = ["data", "sample", str(tmp_path / "box.extxyz"), "--engine", "openmm"]
    args += ["--forcefield", "amber14/tip3pfb.xml", "--temperatures", "300", "--frames", "3"]
    args += ["--every", "20", "--equilibration", "10", "--cutoff", "6.0", "--out", str(out)]
    assert main(args) == 0
    assert "unlabelled" in capsys.readouterr().out
    ds = read(out)
    assert len(ds) == 3
    for s in ds:
        assert s.energy is None and s.forces is None and s.periodic
        assert "tip3pfb" in s.info["md_forcefield"] and "flexible" in s.info["md_forcefield"]
        assert np.isfinite(s.info["mm_energy_eV"])
    # Flexible water: the O-H bond lengths vary (rigid TIP3P-FB keeps them at 1.0118 A).
    oh = np.linalg.norm(ds[2].positions[1::3] - ds[2].positions[0::3], axis=1)
    assert oh.std() > 1e-3 and abs(oh.mean() - 1.01) < 0.05
    # Too small a box for the cutoff, and molecules other than water: clear errors (exit 1).
    assert main([*args[:-2], "--cutoff", "9.0", "--out", str(out)]) == 1
    assert "too small for a 9 A cutoff" in capsys.readouterr().err
    from ase.build import molecule

    m = molecule("CH3OH")
    m.set_cell([15.0, 15.0, 15.0])
    m.pbc = True
    m.write(tmp_path / "meoh.extxyz")
    assert main(["data", "sample", str(tmp_path / "meoh.extxyz"), *args[3:]]) == 1
    assert "give a PDB file with residue names" in capsys.readouterr().err


def test_openmm_presampling_from_a_pdb_with_a_barostat(tmp_path):
    """A PDB start (residues from the file), rigid TIP3P at 2 fs, NPT: the box changes."""
    from openmm import app, unit

    from mlsim._fileio import atomic_write
    from mlsim.data import sample

    ff = app.ForceField("amber14/tip3p.xml")
    m = app.Modeller(app.Topology(), [])
    m.addSolvent(ff, model="tip3p", boxSize=openmm.Vec3(2.0, 2.0, 2.0) * unit.nanometer)
    with atomic_write(tmp_path / "water.pdb") as fh:
        app.PDBFile.writeFile(m.topology, m.positions, fh)
    ds = sample(
        tmp_path / "water.pdb",
        None,
        [300.0],
        2,
        engine="openmm",
        forcefield="amber14/tip3p.xml",
        rigid_water=True,
        pressure_bar=1.0,
        timestep_fs=2.0,
        every=50,
        equilibration_fs=100.0,
        progress=False,
    )
    assert len(ds) == 2 and all(s.energy is None for s in ds)
    assert not np.allclose(ds[1].cell, np.eye(3) * 20.0)  # the barostat moved the box
    oh = np.linalg.norm(ds[1].positions[1::3] - ds[1].positions[0::3], axis=1)
    np.testing.assert_allclose(oh, 0.9572, atol=1e-4)  # rigid TIP3P
    assert ds[0].info["pressure_bar"] == 1.0 and "rigid" in ds[0].info["md_forcefield"]
