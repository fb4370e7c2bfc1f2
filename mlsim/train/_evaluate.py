"""Evaluate a model against labelled structures: the numbers `mlsim evaluate` reports."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mlsim.models import compute_properties
from mlsim.train._batching import TensorData

__all__ = ["evaluate", "metrics_from_predictions", "predict"]


def predict(
    model: nn.Module,
    structures: Sequence,
    batch_size: int = 128,
    progress: bool = False,
    dtype: torch.dtype | None = None,
) -> dict[str, np.ndarray]:
    """Energies and forces predicted for every structure, alongside the references (eV, eV/A)."""
    ref = next((b for b in model.buffers() if b.dtype.is_floating_point), None)
    if dtype is None:
        dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    data = TensorData(structures, dtype)
    n = len(data)
    e_pred, f_pred = np.zeros(n), []
    from tqdm import tqdm

    bar = tqdm(
        total=n, desc="evaluate", unit="struct", file=sys.stderr, disable=not progress, leave=False
    )
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        b = data.batch(idx).to(device)
        out = compute_properties(model, *b.inputs(), forces=True)
        e_pred[idx] = out["energy"].detach().double().cpu().numpy()
        f_pred.append(out["forces"].detach().double().cpu().numpy())
        bar.update(len(idx))
    bar.close()
    return {
        "energy_pred": e_pred,
        "energy_ref": data.energy.numpy(),
        "has_energy": data.has_energy.numpy(),
        "forces_pred": np.concatenate(f_pred) if f_pred else np.zeros((0, 3)),
        # References straight from the structures (float64), not the model-dtype training copy.
        "forces_ref": np.concatenate(
            [st.forces if st.forces is not None else np.zeros((len(st), 3)) for st in structures]
        )
        if n
        else np.zeros((0, 3)),
        "has_forces": data.has_forces.numpy(),
        "n_atoms": data.n_atoms.astype(float),
    }


def metrics_from_predictions(p: dict[str, np.ndarray]) -> dict[str, float | int | None]:
    """MAE/RMSE of energy per atom (meV/atom) and force components (meV/A); None if unlabelled."""
    he, hf = p["has_energy"], p["has_forces"]
    de = (p["energy_pred"] - p["energy_ref"])[he] / p["n_atoms"][he] * 1000.0
    df = ((p["forces_pred"] - p["forces_ref"])[hf] * 1000.0).reshape(-1)
    nan = None  # not NaN: the JSON output must stay valid JSON
    return {
        "n_structures": len(p["energy_pred"]),
        "n_atoms": int(p["n_atoms"].sum()),
        "energy_mae_meV_per_atom": float(np.abs(de).mean()) if de.size else nan,
        "energy_rmse_meV_per_atom": float(np.sqrt((de**2).mean())) if de.size else nan,
        "force_mae_meV_per_A": float(np.abs(df).mean()) if df.size else nan,
        "force_rmse_meV_per_A": float(np.sqrt((df**2).mean())) if df.size else nan,
    }


def evaluate(
    model: nn.Module, structures: Sequence, batch_size: int = 128, progress: bool = False
) -> dict[str, float | int]:
    """Metrics of `model` on labelled `structures` (see metrics_from_predictions)."""
    if len(structures) == 0:
        raise ValueError("no structures to evaluate")
    return metrics_from_predictions(predict(model, structures, batch_size, progress))
