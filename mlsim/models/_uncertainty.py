"""Committee uncertainty: per-atom force spread and energy spread of an ensemble, and its calibration.

A committee's members were trained from different initial weights on the same data; where the data
is, they agree, and away from it they disagree. The spread is therefore a cheap error *indicator*.
It is not an error *estimate* until calibrated: `Calibration` fits one scale factor on labelled
validation data so that the predicted per-atom force error matches the observed one on average,
and reports how well the ranking holds (Spearman correlation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlsim.models._properties import (
    MIN_DISTANCE,
    _check_finite,
    check_atomic_numbers,
    check_min_distance,
)

__all__ = [
    "Calibration",
    "calibrate",
    "committee_errors",
    "committee_properties",
    "plot_calibration",
    "spearman",
]


def committee_properties(
    model: nn.Module,
    numbers: Tensor,
    positions: Tensor,
    cell: Tensor,
    pbc: Tensor,
    batch: Tensor,
    pairs: tuple[Tensor, Tensor, Tensor] | None = None,
    min_distance: float | None = MIN_DISTANCE,
) -> dict[str, Tensor]:
    """Mean and spread of an ensemble's energies (eV) and forces (eV/A) for one batch.

    Returns "energy" (B,), "forces" (N, 3) (the committee means), "energy_std" (B,),
    "forces_std" (N,): per atom, the root mean square over members of |F_k,i - mean_k F_k,i|, and
    "member_forces" (M, N, 3). The members of an Ensemble are evaluated one by one on one pair
    list: each forward pass with its own backward pass, or for inference-optimised members
    (optimize_for_inference) their direct energy-and-gradient call, with no autograd at all. So
    a committee of M costs M single-model evaluations; one backward pass per member through the
    scripted Ensemble's joint graph instead ran every member's backward each time (measured in
    benchmarks/committee.py). The input checks and errors are those of compute_properties.
    """
    if not hasattr(model, "member_energies"):
        raise ValueError(
            "force uncertainty needs a committee (an ensemble model); train with `ensemble: 4`"
        )
    check_atomic_numbers(numbers, [int(z) for z in model.elements])
    if not torch.isfinite(positions).all():
        raise ValueError("positions contain NaN or infinite values")
    if min_distance is not None and min_distance > 0:
        check_min_distance(numbers, positions, cell, pbc, batch, min_distance)
    if hasattr(model, "members"):
        members, member_forces = _each_member(model, numbers, positions, cell, pbc, batch, pairs)
    else:
        members, member_forces = _joint(model, numbers, positions, cell, pbc, batch, pairs)
    mean_f = member_forces.mean(0)
    dev = member_forces - mean_f
    out = {
        "energy": members.mean(0),
        "forces": mean_f,
        # Population spread: a committee of M = 1 has spread 0, not NaN.
        "energy_std": members.std(0, unbiased=False),
        "forces_std": (dev * dev).sum(-1).mean(0).sqrt(),
        "member_forces": member_forces,
    }
    # A NaN in any member reaches the means, so checking the means covers every member.
    _check_finite({"energy": out["energy"], "forces": out["forces"]}, numbers, batch, 0)
    return out


def _each_member(
    model: nn.Module,
    numbers: Tensor,
    positions: Tensor,
    cell: Tensor,
    pbc: Tensor,
    batch: Tensor,
    pairs: tuple[Tensor, Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """Energies (M, B) and forces (M, N, 3) of an Ensemble's members, one member at a time."""
    energies, forces = [], []
    # children(), not iteration: a ModuleList loaded from a model.pt cannot be iterated.
    for m in model.members.children():
        if hasattr(m, "energy_and_gradients"):
            i, j, shifts = pairs if pairs is not None else m.pairs(positions, cell, pbc, batch)
            e, g, _, _ = m.energy_and_gradients(
                numbers, positions, cell, pbc, batch, i, j, shifts, False
            )
        else:
            pos = positions.detach().requires_grad_(True)
            if pairs is None:
                e = m(numbers, pos, cell, pbc, batch)
            else:
                e = m.energy_from_pairs(numbers, pos, cell, pbc, batch, *pairs)
            (g,) = torch.autograd.grad(e.sum(), pos, allow_unused=True)
            g = g if g is not None else torch.zeros_like(pos)
        energies.append(e.detach().to(positions.dtype))
        forces.append(-g.detach().to(positions.dtype))
    return torch.stack(energies), torch.stack(forces)


def _joint(
    model: nn.Module,
    numbers: Tensor,
    positions: Tensor,
    cell: Tensor,
    pbc: Tensor,
    batch: Tensor,
    pairs: tuple[Tensor, Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """Energies (M, B) and forces (M, N, 3) of any other committee (member_energies only)."""
    pos = positions.detach().requires_grad_(True)
    if pairs is None:
        members = model.member_energies(numbers, pos, cell, pbc, batch)
    else:
        members = model.member_energies_from_pairs(numbers, pos, cell, pbc, batch, *pairs)
    n_members = members.shape[0]
    forces = []
    for k in range(n_members):
        (g,) = torch.autograd.grad(
            members[k].sum(), pos, retain_graph=k + 1 < n_members, allow_unused=True
        )
        forces.append(-g if g is not None else torch.zeros_like(pos))
    return members.detach(), torch.stack(forces).detach()


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (average ranks for ties)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape or x.size < 3:
        raise ValueError("spearman needs two arrays of the same length >= 3")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


@dataclass
class Calibration:
    """Maps a committee's per-atom force spread to an expected per-atom force error (eV/A)."""

    scale: float  # predicted error = scale * spread
    spearman: float  # rank correlation of spread and observed per-atom error
    n_atoms: int
    rmse_observed: float  # eV/A, per-atom error norm, RMS over atoms
    rmse_predicted: float  # eV/A, RMS of scale * spread over the same atoms
    miscalibration_area: float  # mean |observed - expected| fraction over the error quantiles

    def __call__(self, spread: np.ndarray) -> np.ndarray:
        """Expected per-atom force error norm (eV/A) for a spread (eV/A)."""
        return self.scale * np.asarray(spread)

    def to_dict(self) -> dict[str, float]:
        """Plain dict for JSON."""
        return asdict(self)


def calibrate(spread: np.ndarray, error: np.ndarray) -> Calibration:
    """Fit `scale` so that scale*spread is the expected per-atom force error norm (eV/A).

    spread and error are per atom (eV/A): committee spread (`forces_std`) and the norm of
    (reference - committee mean) force. Error model: isotropic Gaussian per atom with
    E|e_i|^2 = (scale * s_i)^2, i.e. sigma = scale*s_i/sqrt(3) per component; the maximum-likelihood
    scale is scale^2 = mean(e_i^2 / s_i^2).
    """
    s = np.asarray(spread, dtype=float).ravel()
    e = np.asarray(error, dtype=float).ravel()
    if s.shape != e.shape or s.size < 3:
        raise ValueError("calibrate needs per-atom spread and error arrays of equal length >= 3")
    if not (np.isfinite(s).all() and np.isfinite(e).all()):
        raise ValueError("calibrate: spread or error contains NaN or infinite values")
    floor = max(1e-12, 1e-6 * float(s.max()))
    s_safe = np.maximum(s, floor)
    scale = float(np.sqrt(np.mean(e**2 / s_safe**2)))
    predicted = scale * s_safe
    # Under the model, 3|e|^2 / predicted^2 is chi-square with 3 degrees of freedom: compare the
    # fraction of atoms below each quantile with the nominal fraction.
    from scipy.stats import chi2

    z = 3.0 * (e / predicted) ** 2
    levels = np.linspace(0.05, 0.95, 19)
    observed = np.array([(z <= chi2.ppf(q, 3)).mean() for q in levels])
    return Calibration(
        scale=scale,
        spearman=spearman(s, e),
        n_atoms=int(s.size),
        rmse_observed=float(np.sqrt(np.mean(e**2))),
        rmse_predicted=float(np.sqrt(np.mean(predicted**2))),
        miscalibration_area=float(np.mean(np.abs(observed - levels))),
    )


def committee_errors(
    model: nn.Module, structures: Sequence[Any], progress: bool = False
) -> dict[str, np.ndarray]:
    """Per structure and per atom: committee spread next to the observed error, for calibration.

    Returns arrays over structures ("index" in `structures`, "energy_error" eV, "energy_std" eV, "max_force_error" and
    "max_force_std" eV/A, "n_atoms") and over all atoms ("force_error" = |F_ref - F_mean|,
    "force_std"), for structures that carry reference forces.
    """
    from tqdm import tqdm

    dtype = next((b.dtype for b in model.buffers() if b.is_floating_point()), torch.float32)
    rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "index",
            "energy_error",
            "energy_std",
            "max_force_error",
            "max_force_std",
            "n_atoms",
        )
    }
    atom_err: list[np.ndarray] = []
    atom_std: list[np.ndarray] = []
    for k, s in enumerate(tqdm(structures, desc="committee", disable=not progress)):
        if s.forces is None:
            continue
        n = len(s)
        cell = torch.as_tensor(
            np.asarray(s.cell) if s.cell is not None else np.zeros((3, 3)), dtype=dtype
        )
        try:
            out = committee_properties(
                model,
                torch.as_tensor(np.asarray(s.numbers), dtype=torch.long),
                torch.as_tensor(np.asarray(s.positions), dtype=dtype),
                cell.unsqueeze(0),
                torch.as_tensor(np.asarray(s.pbc, dtype=bool)).view(1, 3),
                torch.zeros(n, dtype=torch.long),
            )
        except ValueError as exc:
            raise ValueError(f"structure {k}: {exc}") from exc
        err = np.linalg.norm(np.asarray(s.forces) - out["forces"].double().numpy(), axis=1)
        std = out["forces_std"].double().numpy()
        atom_err.append(err)
        atom_std.append(std)
        e_ref = s.energy if s.energy is not None else np.nan
        rows["energy_error"].append(float(out["energy"][0]) - e_ref)
        rows["energy_std"].append(float(out["energy_std"][0]))
        rows["max_force_error"].append(float(err.max()))
        rows["max_force_std"].append(float(std.max()))
        rows["n_atoms"].append(n)
        rows["index"].append(k)
    if not atom_err:
        raise ValueError("no structure carries reference forces to compare the spread with")
    result = {k: np.asarray(v) for k, v in rows.items()}
    result["force_error"] = np.concatenate(atom_err)
    result["force_std"] = np.concatenate(atom_std)
    return result


def plot_calibration(spread: np.ndarray, error: np.ndarray, cal: Calibration, path: Any) -> None:
    """Observed vs predicted per-atom force error: binned RMS (points) and the scatter (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlsim._fileio import atomic_path

    pred = cal(spread)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.loglog(pred, error, ".", ms=2, alpha=0.3, color="0.5", label="atoms")
    edges = np.quantile(pred, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, 9)
    centers = [np.sqrt(np.mean(pred[which == b] ** 2)) for b in range(10) if (which == b).any()]
    rms = [np.sqrt(np.mean(error[which == b] ** 2)) for b in range(10) if (which == b).any()]
    ax.loglog(centers, rms, "o-", color="C3", label="binned RMS")
    lo, hi = float(min(pred.min(), error[error > 0].min())), float(max(pred.max(), error.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="ideal")
    ax.set(
        xlabel="predicted force error (eV/A) = scale x spread",
        ylabel="observed |F_ref - F| (eV/A)",
        title=f"scale {cal.scale:.2f}, Spearman {cal.spearman:.2f}",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
