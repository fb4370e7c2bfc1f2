"""Selection: frames the committee is unsure about, made diverse by farthest-point sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlsim.data import Structure

__all__ = ["fingerprint", "select"]


def fingerprint(s: Structure, cutoff: float = 5.0, n_bins: int = 24) -> np.ndarray:
    """Permutation-invariant structure fingerprint: smoothed distance histograms per element pair.

    For every unordered element pair (a, b), Gaussian-smeared counts of a-b distances within
    `cutoff`, divided by the atom count; O(N) through mlsim's neighbor list. Frames of one
    composition are compared in this space.
    """
    from mlsim.neighbors import neighbor_list

    z = np.asarray(s.numbers)
    elements = sorted(set(z.tolist()))
    pairs = [(a, b) for k, a in enumerate(elements) for b in elements[k:]]
    i, j, shifts = neighbor_list(
        s.positions,
        cutoff,
        s.cell if s.periodic else None,
        s.pbc if s.periodic else False,
        full=False,
    )
    vec = s.positions[j] - s.positions[i]
    if s.periodic:
        vec = vec + shifts @ np.asarray(s.cell)
    d = np.linalg.norm(vec, axis=1)
    centers = np.linspace(0.5, cutoff, n_bins)
    width = centers[1] - centers[0]
    out = np.zeros((len(pairs), n_bins))
    index = {p: k for k, p in enumerate(pairs)}
    zi, zj = np.minimum(z[i], z[j]), np.maximum(z[i], z[j])
    smear = np.exp(-0.5 * ((d[:, None] - centers[None]) / width) ** 2)
    for (a, b), k in index.items():
        m = (zi == a) & (zj == b)
        out[k] = smear[m].sum(0)
    return (out / max(len(z), 1)).ravel()


def select(
    frames: Sequence[Structure],
    uncertainty: np.ndarray,
    lower: float,
    upper: float,
    n_max: int,
) -> list[int]:
    """Indices of at most n_max frames with lower <= uncertainty < upper, diverse in fingerprint.

    Farthest-point sampling: start from the most uncertain candidate, then repeatedly add the
    candidate farthest from everything chosen so far, so near-duplicates from one walker are not
    labelled twice. Frames of different compositions never compete (distance infinite).
    """
    u = np.asarray(uncertainty, dtype=float)
    if len(frames) != len(u):
        raise ValueError(f"{len(frames)} frames but {len(u)} uncertainties")
    cand = np.flatnonzero((u >= lower) & (u < upper))
    if n_max <= 0 or len(cand) == 0:
        return []
    if len(cand) <= n_max:
        return sorted(int(k) for k in cand)
    feats = [fingerprint(frames[k]) for k in cand]
    comp = [tuple(sorted(np.asarray(frames[k].numbers).tolist())) for k in cand]
    first = int(np.argmax(u[cand]))
    chosen = [first]
    dmin = np.full(len(cand), np.inf)
    for _ in range(n_max - 1):
        last = chosen[-1]
        for k in range(len(cand)):
            if comp[k] == comp[last] and len(feats[k]) == len(feats[last]):
                dmin[k] = min(dmin[k], float(np.linalg.norm(feats[k] - feats[last])))
        dmin[chosen] = -np.inf
        # Compositions never chosen keep distance inf, so each composition gets a first pick.
        chosen.append(int(np.argmax(dmin)))
    return sorted(int(cand[k]) for k in chosen)
