"""Checks run on every structure a file delivers, so bad data fails loudly at load time, not in training."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mlsim.data._structure import MAX_Z, Structure

__all__ = ["MIN_DISTANCE", "validate_structure", "validate_structures"]

MIN_DISTANCE = 0.5  # Angstrom; closer atoms are a broken geometry or a unit mistake (nm/Bohr vs A)


def _min_pair_distance(s: Structure, cutoff: float) -> tuple[float, int, int]:
    """Return (distance, i, j) of the closest pair (images included under pbc); inf if none within cutoff."""
    n = len(s)
    if n < 2 and not s.periodic:
        return float("inf"), -1, -1
    if not s.periodic and n <= 2000:
        d = s.positions[:, None, :] - s.positions[None, :, :]
        r2 = np.einsum("ijk,ijk->ij", d, d)
        np.fill_diagonal(r2, np.inf)
        k = int(np.argmin(r2))
        i, j = divmod(k, n)
        return float(np.sqrt(r2[i, j])), i, j
    if not s.periodic:
        from scipy.spatial import cKDTree

        pairs = cKDTree(s.positions).query_pairs(cutoff, output_type="ndarray")
        if len(pairs) == 0:
            return float("inf"), -1, -1
        dist = np.linalg.norm(s.positions[pairs[:, 0]] - s.positions[pairs[:, 1]], axis=1)
        k = int(np.argmin(dist))
        return float(dist[k]), int(pairs[k, 0]), int(pairs[k, 1])
    from ase.neighborlist import primitive_neighbor_list

    # Minimum image and periodic copies included: a neighbour list with the threshold as cutoff.
    i_arr, j_arr, dist = primitive_neighbor_list(
        "ijd", s.pbc, s.cell, s.positions, cutoff, self_interaction=False
    )
    if len(dist) == 0:
        return float("inf"), -1, -1
    k = int(np.argmin(dist))
    return float(dist[k]), int(i_arr[k]), int(j_arr[k])


def validate_structure(
    s: Structure,
    index: int | None = None,
    *,
    require_energy: bool = False,
    require_forces: bool = False,
    n_atoms: int | None = None,
    min_distance: float = MIN_DISTANCE,
) -> None:
    """Raise ValueError naming `index` if `s` has non-finite values, unknown elements, missing labels or clashes."""
    where = f"structure {index}" if index is not None else "structure"
    if n_atoms is not None and len(s) != n_atoms:
        raise ValueError(
            f"{where}: has {len(s)} atoms but the data set requires {n_atoms} (inconsistent atom counts)"
        )
    if len(s) == 0:
        raise ValueError(f"{where}: has no atoms")
    bad = (s.numbers < 1) | (s.numbers > MAX_Z)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(
            f"{where}: unknown element with atomic number {int(s.numbers[k])} (atom {k})"
        )
    if not np.isfinite(s.positions).all():
        k = int(np.argmax(~np.isfinite(s.positions).all(axis=1)))
        raise ValueError(f"{where}: non-finite (NaN/inf) position on atom {k}")
    if s.cell is not None and not np.isfinite(s.cell).all():
        raise ValueError(f"{where}: non-finite (NaN/inf) cell")
    if s.periodic and abs(np.linalg.det(s.cell)) < 1e-6:
        raise ValueError(f"{where}: periodic structure with a degenerate (zero-volume) cell")
    if s.energy is None:
        if require_energy:
            raise ValueError(f"{where}: energy is missing but required")
    elif not np.isfinite(s.energy):
        raise ValueError(f"{where}: non-finite (NaN/inf) energy")
    if s.forces is None:
        if require_forces:
            raise ValueError(f"{where}: forces are missing but required")
    elif not np.isfinite(s.forces).all():
        k = int(np.argmax(~np.isfinite(s.forces).all(axis=1)))
        raise ValueError(f"{where}: non-finite (NaN/inf) force on atom {k}")
    if s.stress is not None and not np.isfinite(s.stress).all():
        raise ValueError(f"{where}: non-finite (NaN/inf) stress")
    if min_distance > 0:
        d, i, j = _min_pair_distance(s, min_distance)
        if d < min_distance:
            raise ValueError(
                f"{where}: atoms {i} and {j} are {d:.3f} A apart (< {min_distance} A); "
                "broken geometry or wrong length unit?"
            )


def validate_structures(
    structures: Iterable[Structure],
    *,
    require_energy: bool = False,
    require_forces: bool = False,
    same_n_atoms: bool = False,
    min_distance: float = MIN_DISTANCE,
    start: int = 0,
) -> None:
    """Validate every structure in order; the error names the bad structure's index (from `start`)."""
    n_atoms = None
    for i, s in enumerate(structures, start):
        validate_structure(
            s,
            i,
            require_energy=require_energy,
            require_forces=require_forces,
            n_atoms=n_atoms,
            min_distance=min_distance,
        )
        if same_n_atoms and n_atoms is None:
            n_atoms = len(s)
