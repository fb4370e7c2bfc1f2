"""Evaluate a model against labelled structures: the numbers `mlsim evaluate` reports."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mlsim.models import compute_properties
from mlsim.train._batching import PackedStructures

__all__ = ["evaluate", "metrics_from_predictions", "predict"]


def predict(
    model: nn.Module,
    structures: Sequence | PackedStructures,
    batch_size: int = 128,
    progress: bool = False,
    dtype: torch.dtype | None = None,
) -> dict[str, np.ndarray]:
    """Energies, forces (and stresses where labelled) predicted for every structure, beside the references."""
    data = (
        structures
        if isinstance(structures, PackedStructures)
        else PackedStructures.from_structures(structures)
    )
    return predict_share(model, data, batch_size, progress=progress, dtype=dtype)


def predict_share(
    model: nn.Module,
    data: PackedStructures,
    batch_size: int,
    *,
    progress: bool = False,
    dtype: torch.dtype | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, np.ndarray]:
    """predict() of the batches rank, rank + world, ... only; the other rows of the arrays are 0.

    Batch k covers structures [k * batch_size, (k + 1) * batch_size) whatever `world` is, so the
    sum of the ranks' arrays equals predict() exactly (x + 0 is exact).
    """
    ref = next((b for b in model.buffers() if b.dtype.is_floating_point), None)
    if dtype is None:
        dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    n = len(data)
    n_atoms = data.n_atoms
    ptr = np.concatenate([[0], np.cumsum(n_atoms, dtype=np.int64)])
    e_pred = np.zeros(n)
    f_pred = np.zeros((int(ptr[-1]), 3))
    f_ref = np.zeros((int(ptr[-1]), 3))
    has_stress = data.has_stress.astype(bool)
    if has_stress.any():
        data.check_stress_cells("evaluation data")
    s_pred = np.zeros((n, 3, 3))
    from tqdm import tqdm

    bar = tqdm(
        total=n, desc="evaluate", unit="struct", file=sys.stderr, disable=not progress, leave=False
    )
    for k, start in enumerate(range(0, n, batch_size)):
        stop = min(n, start + batch_size)
        if k % world == rank:
            idx = np.arange(start, stop)
            b = data.batch(idx, dtype).to(device)
            # The stress (the model's strain derivative) only where some structure can be compared.
            stress = bool(has_stress[start:stop].any())
            inputs = b.strain_inputs() if stress else b.inputs()
            out = compute_properties(model, *inputs, forces=True, stress=stress)
            e_pred[start:stop] = out["energy"].detach().double().cpu().numpy()
            if stress:
                s_pred[start:stop] = out["stress"].detach().double().cpu().numpy()
            f_pred[ptr[start] : ptr[stop]] = out["forces"].detach().double().cpu().numpy()
            # References as stored (float64), not the model-dtype copy in the batch.
            f_ref[ptr[start] : ptr[stop]] = data.reference_forces(idx)
        bar.update(stop - start)
    bar.close()
    return {
        "energy_pred": e_pred,
        "energy_ref": data.energy.astype(np.float64),
        "has_energy": data.has_energy.astype(bool),
        "forces_pred": f_pred,
        "forces_ref": f_ref,
        "has_forces": np.repeat(data.has_forces.astype(bool), n_atoms),
        "n_atoms": n_atoms.astype(float),
        "stress_pred": s_pred,
        "stress_ref": data.stress.astype(np.float64),
        "has_stress": has_stress,
    }


def metrics_from_predictions(p: dict[str, np.ndarray]) -> dict[str, float | int | None]:
    """MAE/RMSE of energy/atom (meV), force and stress components (meV/A, meV/A^3); None if unlabelled."""
    he, hf = p["has_energy"], p["has_forces"]
    de = (p["energy_pred"] - p["energy_ref"])[he] / p["n_atoms"][he] * 1000.0
    df = ((p["forces_pred"] - p["forces_ref"])[hf] * 1000.0).reshape(-1)
    hs = p.get("has_stress")
    ds = (
        ((p["stress_pred"] - p["stress_ref"])[hs] * 1000.0).reshape(-1)
        if hs is not None
        else np.zeros(0)
    )
    nan = None  # not NaN: the JSON output must stay valid JSON
    return {
        "n_structures": len(p["energy_pred"]),
        "n_atoms": int(p["n_atoms"].sum()),
        "energy_mae_meV_per_atom": float(np.abs(de).mean()) if de.size else nan,
        "energy_rmse_meV_per_atom": float(np.sqrt((de**2).mean())) if de.size else nan,
        "force_mae_meV_per_A": float(np.abs(df).mean()) if df.size else nan,
        "force_rmse_meV_per_A": float(np.sqrt((df**2).mean())) if df.size else nan,
        "stress_mae_meV_per_A3": float(np.abs(ds).mean()) if ds.size else nan,
        "stress_rmse_meV_per_A3": float(np.sqrt((ds**2).mean())) if ds.size else nan,
    }


def evaluate(
    model: nn.Module, structures: Sequence, batch_size: int = 128, progress: bool = False
) -> dict[str, float | int]:
    """Metrics of `model` on labelled `structures` (see metrics_from_predictions)."""
    if len(structures) == 0:
        raise ValueError("no structures to evaluate")
    return metrics_from_predictions(predict(model, structures, batch_size, progress))
