"""Synthetic test data with known answers: Markov chains and alanine-dipeptide conformer series.

The alanine generator sets the backbone dihedrals of a real structure by rigid rotations about the
N-CA (phi) and CA-C (psi) bonds, so bond lengths and angles stay exact and the phi/psi of every
frame, hence its state label, is known by construction.
"""

from __future__ import annotations

import numpy as np

__all__ = ["markov_chain", "set_phi_psi", "synthetic_alanine_trajectory"]


def markov_chain(
    transition_matrix: np.ndarray, n_steps: int, start: int = 0, seed: int = 0
) -> np.ndarray:
    """Simulate a discrete Markov chain (int32 state sequence of length n_steps)."""
    p = np.asarray(transition_matrix, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"transition matrix must be square, got shape {p.shape}")
    if np.any(p < 0) or not np.allclose(p.sum(1), 1.0):
        raise ValueError("transition matrix rows must be non-negative and sum to 1")
    cum = np.cumsum(p, axis=1)
    cum[:, -1] = 1.0
    u = np.random.default_rng(seed).random(n_steps)
    out = np.empty(n_steps, dtype=np.int32)
    s = int(start)
    for i in range(n_steps):
        out[i] = s
        s = int(np.searchsorted(cum[s], u[i], side="right"))
    return out


def _rotate(x: np.ndarray, axis_from: int, axis_to: int, moving: np.ndarray, angle: float):
    """Rotate atoms ``moving`` of x (n, 3) by ``angle`` about the bond axis_from -> axis_to."""
    a, b = x[axis_from], x[axis_to]
    k = (b - a) / np.linalg.norm(b - a)
    v = x[moving] - b
    c, s = np.cos(angle), np.sin(angle)
    # Rodrigues' rotation formula.
    x[moving] = b + v * c + np.cross(k, v) * s + np.outer(v @ k, k) * (1 - c)


def _downstream(topology, start: int, blocked: int) -> np.ndarray:
    """Atoms reachable from ``start`` in the bond graph without passing ``blocked``."""
    nbrs: dict[int, set[int]] = {a.index: set() for a in topology.atoms}
    for a1, a2 in topology.bonds:
        nbrs[a1.index].add(a2.index)
        nbrs[a2.index].add(a1.index)
    seen, stack = {start}, [start]
    while stack:
        for j in nbrs[stack.pop()]:
            if j != blocked and j not in seen:
                seen.add(j)
                stack.append(j)
    return np.array(sorted(seen))


def set_phi_psi(traj, phi: np.ndarray, psi: np.ndarray):
    """Return a copy of a one-frame alanine-dipeptide trajectory with frames at the given phi, psi."""
    import mdtraj as md

    iphi = md.compute_phi(traj)[0][0]
    ipsi = md.compute_psi(traj)[0][0]
    if traj.topology.n_bonds == 0:
        raise ValueError("topology has no bonds; cannot find the atoms a dihedral rotation moves")
    _, n, ca, c = iphi
    # Moving side of each rotation: everything bonded beyond CA (for phi) or beyond C (for psi).
    mov_phi = _downstream(traj.topology, ca, n)
    mov_phi = mov_phi[mov_phi != ca]
    mov_psi = _downstream(traj.topology, ipsi[2], ipsi[1])
    mov_psi = mov_psi[mov_psi != ipsi[2]]
    phi = np.atleast_1d(np.asarray(phi, dtype=np.float64))
    psi = np.atleast_1d(np.asarray(psi, dtype=np.float64))
    x0 = traj.xyz[0].astype(np.float64)
    phi0 = md.compute_phi(traj)[1][0, 0]
    psi0 = md.compute_psi(traj)[1][0, 0]
    xyz = np.empty((len(phi), traj.n_atoms, 3))
    for t in range(len(phi)):
        x = x0.copy()
        # A right-handed rotation about N->CA of the CA side by +d increases phi by d (IUPAC).
        _rotate(x, n, ca, mov_phi, phi[t] - phi0)
        _rotate(x, ipsi[1], ipsi[2], mov_psi, psi[t] - psi0)
        xyz[t] = x
    return md.Trajectory(xyz.astype(np.float32), traj.topology)


# Basin centres (phi, psi) in degrees and widths used for the synthetic alanine dynamics.
_CENTRES = np.array([[-83.0, 73.0], [-150.0, 155.0], [-75.0, -40.0], [60.0, 45.0]])
_WIDTH_DEG = 12.0


def synthetic_alanine_trajectory(
    pdb_traj,
    transition_matrix: np.ndarray,
    n_frames: int,
    seed: int = 0,
    start: int = 0,
    width_deg: float = _WIDTH_DEG,
) -> tuple[object, np.ndarray]:
    """A trajectory hopping between the four alanine basins by a Markov chain, plus its states.

    Each frame's (phi, psi) is its basin centre plus Gaussian noise of ``width_deg``; returns the
    mdtraj Trajectory and the basin sequence (which equals the phi/psi label for narrow widths).
    """
    p = np.asarray(transition_matrix)
    if p.shape != (4, 4):
        raise ValueError(f"need a 4x4 transition matrix over the alanine basins, got {p.shape}")
    states = markov_chain(p, n_frames, start, seed)
    rng = np.random.default_rng(seed + 1)
    ang = np.radians(_CENTRES[states] + rng.normal(0.0, width_deg, size=(n_frames, 2)))
    return set_phi_psi(pdb_traj[0], ang[:, 0], ang[:, 1]), states
