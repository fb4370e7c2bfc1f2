"""The run's figures: parity plot of the final model and learning curve, as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlsim._fileio import atomic_path
from mlsim.train._evaluate import metrics_from_predictions

__all__ = ["plot_run"]


def plot_run(out: Path, history: list[dict], pred: dict[str, np.ndarray], label: str) -> None:
    """Parity plot (energy per atom, force components) and learning curve, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 4.2))
    he, hf = pred["has_energy"], pred["has_forces"]
    n = pred["n_atoms"][he]
    e_ref = pred["energy_ref"][he] / n
    e_pred = pred["energy_pred"][he] / n
    m = metrics_from_predictions(pred)
    shift = e_ref.mean() if e_ref.size else 0.0
    ax[0].plot((e_ref - shift) * 1000, (e_pred - shift) * 1000, ".", ms=3)
    ax[0].set_xlabel("reference energy per atom - mean (meV)")
    ax[0].set_ylabel("predicted (meV)")
    ax[0].set_title(f"{label}: energy MAE {m['energy_mae_meV_per_atom']:.2f} meV/atom")
    f_ref = pred["forces_ref"][hf].ravel()
    f_pred = pred["forces_pred"][hf].ravel()
    ax[1].plot(f_ref, f_pred, ".", ms=1, alpha=0.5)
    ax[1].set_xlabel("reference force component (eV/A)")
    ax[1].set_ylabel("predicted (eV/A)")
    ax[1].set_title(f"force MAE {m['force_mae_meV_per_A']:.1f} meV/A")
    for a in ax:
        lo, hi = a.get_xlim()
        a.plot([lo, hi], [lo, hi], "k-", lw=0.5)
    fig.tight_layout()
    with atomic_path(out / "parity.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] for h in history]
    ax.semilogy(ep, [h["val_force_mae_meV_per_A"] for h in history], label="val force MAE (meV/A)")
    ax.semilogy(
        ep, [h["val_energy_mae_meV_per_atom"] for h in history], label="val energy MAE (meV/atom)"
    )
    ax.set_xlabel("epoch")
    ax.legend()
    ax2 = ax.twinx()
    ax2.semilogy(ep, [h["train_loss"] for h in history], "k:", lw=0.8)
    ax2.set_ylabel("train loss (dotted)")
    fig.tight_layout()
    with atomic_path(out / "learning_curve.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
