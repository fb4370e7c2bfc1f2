"""Shipped capped dipeptides ACE-X-NME: Amber14 parameterises every one, L configuration, named
torsions, and set_torsions turns them exactly."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openmm")

from mlsim.testsystems import (  # noqa: E402
    DIPEPTIDE_RESIDUES,
    capped_dipeptide,
    dihedral,
    dipeptide_torsions,
    get_testsystem,
    set_torsions,
)


def _signed_volume(x: np.ndarray, names: dict[str, int], a: str, b: str, c: str, d: str) -> float:
    """Sign of the chirality volume at atom a with neighbours b, c, d."""
    u, v, w = (x[names[k]] - x[names[a]] for k in (b, c, d))
    return float(np.sign(np.dot(np.cross(u, v), w)))


@pytest.mark.parametrize("residue", DIPEPTIDE_RESIDUES)
def test_dipeptide_loads_with_amber14_and_is_l(residue: str) -> None:
    """Every shipped ACE-X-NME gets an Amber14 System (all templates match, hydrogens named),
    has the L configuration at CA (same handedness as the shipped alanine dipeptide), a finite
    energy, and phi/psi (and chi for side chains that have them)."""
    import openmm

    mol = capped_dipeptide(residue, "obc2", None)
    assert mol.system.getNumParticles() == mol.n_atoms == len(mol.positions)
    res = list(mol.topology.residues())
    assert [r.name for r in res] == ["ACE", residue, "NME"]
    names = {a.name: a.index for a in res[1].atoms()}
    if residue != "GLY":
        ref = get_testsystem("alanine", "vacuum", None)
        ref_names = {a.name: a.index for a in list(ref.topology.residues())[1].atoms()}
        want = _signed_volume(ref.positions, ref_names, "CA", "N", "C", "CB")
        assert _signed_volume(mol.positions, names, "CA", "N", "C", "CB") == want
    ctx = openmm.Context(mol.system, openmm.VerletIntegrator(0.001))
    ctx.setPositions(mol.positions_nm)
    assert np.isfinite(ctx.getState(getEnergy=True).getPotentialEnergy()._value)
    tors = dipeptide_torsions(mol.topology)
    assert {"phi", "psi"} <= set(tors)
    assert ("chi1" in tors) == (residue not in ("GLY", "ALA"))


def test_set_torsions_turns_exactly_and_keeps_bonds() -> None:
    """set_torsions sets phi, psi and chi1 to the asked values and changes no bond length;
    unknown names are refused."""
    mol = capped_dipeptide("VAL", "vacuum", None)
    want = {"phi": -65.0, "psi": -40.0, "chi1": 60.0}
    x = set_torsions(mol.topology, mol.positions, want)
    tors = dipeptide_torsions(mol.topology)
    for k, v in want.items():
        got = np.degrees(dihedral(x, tors[k]))
        assert abs((got - v + 180) % 360 - 180) < 1e-8, k
    for b in mol.topology.bonds():
        i, j = b.atom1.index, b.atom2.index
        d0 = np.linalg.norm(mol.positions[i] - mol.positions[j])
        assert abs(np.linalg.norm(x[i] - x[j]) - d0) < 1e-9
    with pytest.raises(ValueError, match="no torsion"):
        set_torsions(mol.topology, mol.positions, {"chi3": 0.0})
