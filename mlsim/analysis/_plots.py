"""Analysis plots (matplotlib, Agg backend): Ramachandran free energy, TICA map, implied timescales."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlsim._fileio import atomic_path

__all__ = [
    "free_energy_2d",
    "plot_ck_test",
    "plot_implied_timescales",
    "plot_ramachandran",
    "plot_tica",
]


def _pyplot():
    """Import pyplot with the non-interactive Agg backend (safe on headless machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def free_energy_2d(
    x: np.ndarray, y: np.ndarray, bins: int | Sequence = 60, range_: Sequence | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Free energy F = -ln p (in kT, minimum 0) on a 2-D histogram; empty bins are +inf.

    Returns (F (nx, ny), x bin edges, y bin edges).
    """
    x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
    if x.size == 0 or x.size != y.size:
        raise ValueError("x and y must be non-empty and of equal length")
    h, ex, ey = np.histogram2d(x, y, bins=bins, range=range_, density=True)
    with np.errstate(divide="ignore"):
        f = -np.log(h)
    f -= np.min(f[np.isfinite(f)])
    return f, ex, ey


def _save(fig, path: str | os.PathLike) -> Path:
    """Save a figure atomically (mlsim._fileio)."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def plot_ramachandran(
    phi: np.ndarray, psi: np.ndarray, path: str | os.PathLike, fmax_kt: float = 8.0
) -> Path:
    """Ramachandran free-energy surface -ln p(phi, psi) in kT, angles in radians on input."""
    plt = _pyplot()
    from mlsim.analysis._states import ALANINE_STATES

    f, ex, ey = free_energy_2d(np.degrees(phi), np.degrees(psi), 72, [[-180, 180], [-180, 180]])
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    cx, cy = 0.5 * (ex[1:] + ex[:-1]), 0.5 * (ey[1:] + ey[:-1])
    cs = ax.contourf(cx, cy, np.minimum(f, fmax_kt).T, levels=np.linspace(0, fmax_kt, 17))
    fig.colorbar(cs, ax=ax, label="free energy (kT)")
    # The state boundaries of alanine_state_labels (mlsim.analysis._states), for orientation.
    ax.axvline(0, color="w", lw=0.6, ls="--")
    ax.axvline(120, color="w", lw=0.6, ls="--")
    for v in (0, 120, -120):
        ax.plot([-180, 0], [v, v], color="w", lw=0.6, ls="--")
        ax.plot([120, 180], [v, v], color="w", lw=0.6, ls="--")
    for name, (px, py) in zip(ALANINE_STATES, [(-80, 75), (-120, 155), (-80, -40), (60, 30)]):
        ax.text(px, py, name, color="w", fontsize=8, ha="center")
    ax.set(xlabel="phi (deg)", ylabel="psi (deg)", xlim=(-180, 180), ylim=(-180, 180))
    ax.set_title("Ramachandran free energy")
    p = _save(fig, path)
    plt.close(fig)
    return p


def plot_tica(proj: Sequence[np.ndarray], path: str | os.PathLike, fmax_kt: float = 8.0) -> Path:
    """Free energy (kT) over the first two TICA coordinates (or a histogram if there is one)."""
    plt = _pyplot()
    y = np.concatenate([np.asarray(p) for p in proj])
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    if y.shape[1] >= 2:
        f, ex, ey = free_energy_2d(y[:, 0], y[:, 1], 60)
        cx, cy = 0.5 * (ex[1:] + ex[:-1]), 0.5 * (ey[1:] + ey[:-1])
        cs = ax.contourf(cx, cy, np.minimum(f, fmax_kt).T, levels=np.linspace(0, fmax_kt, 17))
        fig.colorbar(cs, ax=ax, label="free energy (kT)")
        ax.set(xlabel="IC 1", ylabel="IC 2")
    else:
        ax.hist(y[:, 0], bins=80)
        ax.set(xlabel="IC 1", ylabel="frames")
    ax.set_title("TICA projection")
    p = _save(fig, path)
    plt.close(fig)
    return p


def plot_implied_timescales(
    lagtimes: np.ndarray,
    its: np.ndarray,
    path: str | os.PathLike,
    dt: float = 1.0,
    unit: str = "ps",
    chosen_lag: int | None = None,
) -> Path:
    """Implied timescales vs lag time (log scale), with the t = tau line below which ITS are noise."""
    plt = _pyplot()
    lag = np.asarray(lagtimes) * dt
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for k in range(its.shape[1]):
        ax.loglog(lag, np.asarray(its[:, k]) * dt, "o-", ms=3, label=f"process {k + 1}")
    ax.fill_between(lag, 1e-12, lag, color="0.85", label="t < lag (unresolved)")
    if chosen_lag is not None:
        ax.axvline(chosen_lag * dt, color="k", ls=":", lw=1, label="MSM lag")
    finite = its[np.isfinite(its)] * dt
    if finite.size:
        ax.set_ylim(min(lag.min(), finite.min()) * 0.5, finite.max() * 2)
    ax.set(xlabel=f"lag time ({unit})", ylabel=f"implied timescale ({unit})")
    ax.legend(fontsize=7)
    ax.set_title("MSM implied timescales")
    p = _save(fig, path)
    plt.close(fig)
    return p


def plot_ck_test(
    lagtimes: np.ndarray, predictions: np.ndarray, estimates: np.ndarray, path: str | os.PathLike
) -> Path:
    """Chapman-Kolmogorov test grid: P(set j at k tau | set i) predicted (line) vs estimated (dots)."""
    plt = _pyplot()
    n = predictions.shape[1]
    fig, axes = plt.subplots(n, n, figsize=(2.0 * n, 2.0 * n), sharex=True, sharey=True)
    axes = np.atleast_2d(axes)
    for i in range(n):
        for j in range(n):
            ax = axes[i, j]
            ax.plot(lagtimes, predictions[:, i, j], "-", label="MSM prediction")
            ax.plot(lagtimes, estimates[:, i, j], "o", ms=3, label="estimate")
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"{i} -> {j}", fontsize=8)
    axes[0, 0].legend(fontsize=6)
    fig.supxlabel("lag time (frames)")
    fig.supylabel("probability")
    p = _save(fig, path)
    plt.close(fig)
    return p
