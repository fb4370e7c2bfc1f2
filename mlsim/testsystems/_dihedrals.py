"""Backbone dihedrals (phi, psi) of alanine dipeptide, computed directly from coordinates."""

from __future__ import annotations

import numpy as np

__all__ = ["dihedral", "phi_psi", "phi_psi_indices"]


def dihedral(x: np.ndarray, idx: tuple[int, int, int, int]) -> np.ndarray:
    """Return the IUPAC dihedral angle (radians, in (-pi, pi]) of atoms idx for (..., n, 3) x."""
    x = np.asarray(x, dtype=np.float64)
    p0, p1, p2, p3 = (x[..., i, :] for i in idx)
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    y = np.linalg.norm(b1, axis=-1) * (b0 * n2).sum(-1)
    return np.arctan2(y, (n1 * n2).sum(-1))


def phi_psi_indices(topology) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return atom indices of phi (C-N-CA-C) and psi (N-CA-C-N) of the ALA residue."""
    res = list(topology.residues())
    names = [{a.name: a.index for a in r.atoms()} for r in res]
    k = next((i for i, r in enumerate(res) if r.name == "ALA"), None)
    if k is None or k == 0 or k == len(res) - 1:
        raise ValueError("topology has no capped ALA residue (need ACE-ALA-NME)")
    prev, ala, nxt = names[k - 1], names[k], names[k + 1]
    phi = (prev["C"], ala["N"], ala["CA"], ala["C"])
    psi = (ala["N"], ala["CA"], ala["C"], nxt["N"])
    return phi, psi


def phi_psi(positions: np.ndarray, topology) -> np.ndarray:
    """Return (..., 2) array of (phi, psi) in radians for positions of shape (..., n_atoms, 3)."""
    iphi, ipsi = phi_psi_indices(topology)
    return np.stack([dihedral(positions, iphi), dihedral(positions, ipsi)], axis=-1)
