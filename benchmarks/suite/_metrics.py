"""Error metrics for comparing a method's energies and forces with reference labels (ASE units)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["energy_errors", "force_errors", "relative_energy_residuals"]


def _check_pair(pred: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Raise ValueError unless pred and ref are same-shaped, non-empty and finite."""
    if pred.shape != ref.shape:
        raise ValueError(f"{what}: predicted shape {pred.shape} != reference shape {ref.shape}")
    if pred.size == 0:
        raise ValueError(f"{what}: no values to compare")
    if not (np.isfinite(pred).all() and np.isfinite(ref).all()):
        raise ValueError(f"{what}: non-finite values (NaN/inf) in predictions or reference")


def relative_energy_residuals(pred: ArrayLike, ref: ArrayLike) -> np.ndarray:
    """Return pred - ref with the mean offset removed (conformer-relative energy errors).

    Methods do not share an energy zero (DFT total energies, xTB, force-field strain energies), so
    only energy *differences* between conformers are comparable; removing the mean signed error
    is the least-squares choice of the one free constant.
    """
    p = np.asarray(pred, dtype=float).reshape(-1)
    r = np.asarray(ref, dtype=float).reshape(-1)
    _check_pair(p, r, "energies")
    d = p - r
    return d - d.mean()


def energy_errors(pred: ArrayLike, ref: ArrayLike) -> dict[str, float]:
    """Return conformer-relative energy MAE/RMSE/max (eV) and the removed mean offset (eV)."""
    p = np.asarray(pred, dtype=float).reshape(-1)
    r = np.asarray(ref, dtype=float).reshape(-1)
    d = relative_energy_residuals(p, r)
    return {
        "n": int(d.size),
        "mae": float(np.abs(d).mean()),
        "rmse": float(np.sqrt((d**2).mean())),
        "max": float(np.abs(d).max()),
        "offset": float((p - r).mean()),
    }


def force_errors(pred: ArrayLike, ref: ArrayLike) -> dict[str, float]:
    """Return per-component force MAE/RMSE/max (eV/A) over all atoms and frames."""
    p = np.asarray(pred, dtype=float)
    r = np.asarray(ref, dtype=float)
    _check_pair(p, r, "forces")
    if p.shape[-1] != 3:
        raise ValueError(f"forces must end in a dimension of 3, got shape {p.shape}")
    d = (p - r).reshape(-1)
    return {
        "n": int(d.size),
        "mae": float(np.abs(d).mean()),
        "rmse": float(np.sqrt((d**2).mean())),
        "max": float(np.abs(d).max()),
    }
