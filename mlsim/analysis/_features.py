"""Rotation- and translation-invariant features of MD trajectories, computed with mdtraj.

Every feature here is a function of internal geometry only (dihedral angles, interatomic distances,
contacts), so a rigid motion of a frame leaves it unchanged; flattened Cartesian coordinates are
never used. Lengths are returned in Angstrom (mlsim's unit), converted from mdtraj's nm.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from mlsim.units import ANGSTROM_PER_NM

__all__ = [
    "check_trajectory",
    "contact_map",
    "dihedral_features",
    "featurize",
    "heavy_atom_distances",
    "load_trajectories",
    "pairwise_distances",
    "phi_psi_angles",
]


def check_trajectory(traj, min_frames: int = 2) -> None:
    """Raise ValueError if an mdtraj Trajectory is too short or has non-finite coordinates."""
    if traj.n_frames < min_frames:
        raise ValueError(f"trajectory has {traj.n_frames} frames; need at least {min_frames}")
    if not np.all(np.isfinite(traj.xyz)):
        raise ValueError("trajectory contains NaN or infinite coordinates")


def load_trajectories(
    paths: Sequence[str | os.PathLike], top: str | os.PathLike | None = None, stride: int = 1
) -> list:
    """Load DCD/XTC/PDB/... trajectories with mdtraj (``top`` required unless the format has one)."""
    import mdtraj as md

    if not paths:
        raise ValueError("no trajectory files given")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if top is not None and not os.path.exists(top):
        raise FileNotFoundError(f"topology file not found: {top}")
    trajs = []
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"trajectory file not found: {p}")
        kw = {} if top is None or str(p).endswith(".pdb") else {"top": str(top)}
        try:
            t = md.load(str(p), stride=stride, **kw)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"cannot read trajectory {p}: {exc}") from exc
        check_trajectory(t)
        trajs.append(t)
    n_atoms = {t.n_atoms for t in trajs}
    if len(n_atoms) != 1:
        raise ValueError(f"trajectories have different atom counts: {sorted(n_atoms)}")
    return trajs


def phi_psi_angles(traj) -> tuple[np.ndarray, np.ndarray]:
    """Return backbone (phi, psi) in radians, each (T, n_residues_with_angle)."""
    import mdtraj as md

    _, phi = md.compute_phi(traj)
    _, psi = md.compute_psi(traj)
    if phi.shape[1] == 0 or psi.shape[1] == 0:
        raise ValueError("topology has no backbone phi/psi dihedrals (is it a peptide?)")
    return phi, psi


def dihedral_features(traj) -> tuple[np.ndarray, list[str]]:
    """Backbone phi/psi as (sin, cos) pairs, (T, 4 n_angles): continuous across the +-pi cut."""
    phi, psi = phi_psi_angles(traj)
    cols, names = [], []
    for label, ang in (("phi", phi), ("psi", psi)):
        for k in range(ang.shape[1]):
            cols += [np.sin(ang[:, k]), np.cos(ang[:, k])]
            names += [f"sin_{label}{k}", f"cos_{label}{k}"]
    return np.stack(cols, axis=1), names


def _atom_label(traj, i: int) -> str:
    """Human-readable atom label, e.g. 'ALA2-CA'."""
    a = traj.topology.atom(int(i))
    return f"{a.residue.name}{a.residue.resSeq}-{a.name}"


def pairwise_distances(
    traj, atom_indices: Sequence[int], min_separation: int = 1
) -> tuple[np.ndarray, list[str]]:
    """All pairwise distances (Angstrom, (T, n_pairs)) between the given atoms.

    ``min_separation`` > 1 skips pairs closer than that in the index list, e.g. to drop bonded pairs
    whose lengths carry no conformational information.
    """
    import mdtraj as md

    idx = np.asarray(atom_indices, dtype=np.int64)
    if idx.ndim != 1 or len(idx) < 2:
        raise ValueError("need at least two atom indices for pairwise distances")
    if idx.min() < 0 or idx.max() >= traj.n_atoms:
        raise ValueError(f"atom index out of range for a {traj.n_atoms}-atom topology")
    pairs = np.array(
        [(i, j) for a, i in enumerate(idx) for j in idx[a + min_separation :]], dtype=np.int64
    )
    d = md.compute_distances(traj, pairs, periodic=False) * ANGSTROM_PER_NM
    names = [f"{_atom_label(traj, i)}:{_atom_label(traj, j)}" for i, j in pairs]
    return d.astype(np.float64), names


def heavy_atom_distances(traj) -> tuple[np.ndarray, list[str]]:
    """All pairwise distances between non-hydrogen atoms (Angstrom)."""
    heavy = [a.index for a in traj.topology.atoms if a.element is None or a.element.symbol != "H"]
    return pairwise_distances(traj, heavy)


def contact_map(
    traj, cutoff_angstrom: float = 4.5, scheme: str = "closest-heavy"
) -> tuple[np.ndarray, list[str]]:
    """Residue-residue contact map: 1 where the residues' closest (heavy) atoms are within cutoff.

    Returns (T, n_residue_pairs) in {0, 1} over all residue pairs i < j (including neighbours, so
    that short peptides have a non-empty map).
    """
    import mdtraj as md

    if cutoff_angstrom <= 0:
        raise ValueError(f"contact cutoff must be positive, got {cutoff_angstrom} A")
    n_res = traj.topology.n_residues
    if n_res < 2:
        raise ValueError("contact map needs at least two residues")
    pairs = np.array(list(combinations(range(n_res), 2)), dtype=np.int64)
    d, pairs = md.compute_contacts(traj, contacts=pairs, scheme=scheme, periodic=False)
    c = (d * ANGSTROM_PER_NM < cutoff_angstrom).astype(np.float64)
    res = list(traj.topology.residues)
    names = [f"{res[i]}:{res[j]}" for i, j in pairs]
    return c, names


_KINDS = ("dihedrals", "distances", "contacts")


def featurize(
    traj, kinds: Sequence[str] = ("dihedrals", "distances")
) -> tuple[np.ndarray, list[str]]:
    """Concatenate the requested invariant features of one trajectory, (T, n_features)."""
    check_trajectory(traj, min_frames=1)
    blocks, names = [], []
    for kind in kinds:
        if kind == "dihedrals":
            x, n = dihedral_features(traj)
        elif kind == "distances":
            x, n = heavy_atom_distances(traj)
        elif kind == "contacts":
            x, n = contact_map(traj)
        else:
            raise ValueError(f"unknown feature kind {kind!r}; choose from {_KINDS}")
        blocks.append(x)
        names += n
    if not blocks:
        raise ValueError("no feature kinds requested")
    return np.concatenate(blocks, axis=1), names
