"""Per-element energy shifts (self energies) fitted by least squares on the training set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["fit_self_energies", "force_rms"]


def fit_self_energies(structures: Sequence, elements: Sequence[int]) -> dict[int, float]:
    """Least-squares E ~ sum_Z n_Z e_Z over structures with energies; min-norm if rank deficient."""
    elements = [int(z) for z in elements]
    col = {z: k for k, z in enumerate(elements)}
    rows, energies = [], []
    for s in structures:
        if s.energy is None:
            continue
        counts = np.zeros(len(elements))
        for z in s.numbers:
            if int(z) not in col:
                raise ValueError(
                    f"element Z={int(z)} is not in the model's element list {elements}"
                )
            counts[col[int(z)]] += 1
        rows.append(counts)
        energies.append(s.energy)
    if not rows:
        raise ValueError("no structure has an energy label; cannot fit self energies")
    a = np.asarray(rows)
    e = np.asarray(energies)
    # Ethanol-only data has a single composition: lstsq then returns the minimum-norm solution,
    # which still removes the mean energy exactly.
    coef, *_ = np.linalg.lstsq(a, e, rcond=None)
    return {z: float(coef[col[z]]) for z in elements}


def force_rms(structures: Sequence) -> float:
    """Root-mean-square force component (eV/A) over labelled structures; 1.0 if none."""
    sq, n = 0.0, 0
    for s in structures:
        if s.forces is not None:
            sq += float(np.sum(s.forces**2))
            n += s.forces.size
    return float(np.sqrt(sq / n)) if n and sq > 0 else 1.0
