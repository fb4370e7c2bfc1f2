"""Alanine dipeptide system, dihedrals and the MD trajectory generator."""

from __future__ import annotations

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")

from mlsim.systems import alanine_dipeptide, dihedral, phi_psi, simulate  # noqa: E402


@pytest.mark.parametrize("solvent", ["vacuum", "obc2"])
def test_alanine_builds_with_finite_energy(solvent: str) -> None:
    """22 atoms, Amber14 templates matched, finite energy, minimised-structure forces small."""
    from openmm import unit

    mol = alanine_dipeptide(solvent, constraints=None)
    assert mol.n_atoms == 22
    assert [r.name for r in mol.topology.residues()] == ["ACE", "ALA", "NME"]
    ctx = openmm.Context(mol.system, openmm.VerletIntegrator(0.001))
    ctx.setPositions(mol.positions_nm)
    st = ctx.getState(getEnergy=True, getForces=True)
    e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    assert np.isfinite(e) and np.all(np.isfinite(f))
    if solvent == "vacuum":  # the shipped structure was minimised in vacuum
        assert np.abs(f).max() < 50.0


def test_phi_psi_matches_reference_geometry() -> None:
    """Dihedral sign convention (IUPAC) on a hand-built geometry, and L-alanine phi < 0 minimum."""
    x = np.array([[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [np.cos(0.7), 1, np.sin(0.7)]])
    assert dihedral(x, (0, 1, 2, 3)) == pytest.approx(-0.7)  # same sign as mdtraj
    mol = alanine_dipeptide()
    phi, psi = phi_psi(mol.positions_nm, mol.topology)
    assert -np.pi <= phi <= np.pi and -np.pi <= psi <= np.pi
    assert phi < 0  # L-alanine minimum (C7eq/C5 region), not the D mirror image


def test_simulate_short_run() -> None:
    """A short 2 fs HBonds Langevin run returns finite frames with the requested spacing."""
    mol = alanine_dipeptide("vacuum", "HBonds")
    fr = simulate(mol.system, mol.positions_nm, 400, 100, seed=3)
    assert fr.positions_nm.shape == (4, 22, 3) and fr.velocities_nm_ps.shape == (4, 22, 3)
    assert np.allclose(fr.times_ps, [0.2, 0.4, 0.6, 0.8])
    assert np.all(np.isfinite(fr.positions_nm))
    with pytest.raises(ValueError, match="multiple"):
        simulate(mol.system, mol.positions_nm, 150, 100, seed=3)
    with pytest.raises(ValueError, match="NaN"):
        simulate(mol.system, np.full((22, 3), np.nan), 100, 100, seed=3)


def test_bad_options_raise_clear_errors() -> None:
    """Unknown solvent or constraint names are refused with a ValueError naming the problem."""
    with pytest.raises(ValueError, match="solvent"):
        alanine_dipeptide("water")
    with pytest.raises(ValueError, match="constraints"):
        alanine_dipeptide("vacuum", constraints="AllBonds")


def test_systems_is_an_alias_of_testsystems_in_angstrom() -> None:
    """mlsim.systems re-exports mlsim.testsystems; positions are Angstrom with an nm view for
    OpenMM; run_langevin (Angstrom, fs) and the older simulate (nm, ps) give the same frames;
    the shipped PDB (one file, in testsystems) is named by both packages; test systems are looked up by name."""
    import mlsim.systems
    import mlsim.testsystems as ts

    assert mlsim.systems.alanine_dipeptide is ts.alanine_dipeptide
    assert mlsim.systems.simulate is ts.simulate and mlsim.systems.write_dcd is ts.write_dcd
    assert mlsim.systems.ALANINE_PDB == ts.ALANINE_PDB and ts.ALANINE_PDB.is_file()
    mol = ts.get_testsystem("alanine", "vacuum", None)
    assert np.allclose(mol.positions_nm * 10.0, mol.positions)
    assert list(mol.numbers[:4]) == [6, 1, 1, 1]
    a = ts.run_langevin(mol.system, mol.positions, 20, 10, seed=4, dt_fs=1.0)
    b = ts.simulate(mol.system, mol.positions_nm, 20, 10, seed=4, dt_fs=1.0)
    assert np.allclose(a.positions, b.positions, atol=1e-5)
    assert np.allclose(a.times_fs, [10.0, 20.0]) and np.allclose(b.times_ps, [0.01, 0.02])
    assert np.allclose(a.velocities_nm_ps, a.velocities * 100.0)  # A/fs -> nm/ps
    with pytest.raises(ValueError, match="unknown test system"):
        ts.get_testsystem("ubiquitin")
