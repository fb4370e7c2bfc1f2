"""Maximum-likelihood training of a Propagator on MD pairs (x(t), x(t + tau)), resumable."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mlsim._fileio import atomic_path
from mlsim.propagators._frames import kabsch_align
from mlsim.propagators._model import Propagator

__all__ = ["TrainResult", "make_pairs", "train_propagator"]


def make_pairs(trajectories: list[np.ndarray], lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (x_t, x_{t+lag}) from trajectories (T, n, 3), the later frame Kabsch-aligned onto x_t.

    Alignment removes overall tumbling, which the Boltzmann density is indifferent to, so the
    model spends its capacity on internal motion; the proposal density stays exact either way.
    """
    if lag < 1:
        raise ValueError("lag must be >= 1 frame")
    x0s, x1s = [], []
    for t in trajectories:
        t = np.asarray(t, dtype=np.float64)
        if t.ndim != 3 or t.shape[-1] != 3:
            raise ValueError(f"trajectory must be (T, n, 3), got {t.shape}")
        if t.shape[0] <= lag:
            continue
        x0s.append(t[:-lag])
        x1s.append(kabsch_align(t[lag:], t[:-lag]))
    if not x0s:
        raise ValueError(f"no trajectory longer than lag={lag} frames")
    return np.concatenate(x0s), np.concatenate(x1s)


@dataclass
class TrainResult:
    """Outcome of training: final train/validation NLL of s per dimension (nats), wall time."""

    steps: int
    train_nll: float
    val_nll: float
    wall_s: float


def _save_checkpoint(path: Path, model: Propagator, opt, step: int, wall: float) -> None:
    """Write model + optimizer state atomically, so an interrupted run resumes from here."""
    payload = {
        "config": asdict(model.config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "opt": opt.state_dict(),
        "step": step,
        "wall_s": wall,
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def train_propagator(
    model: Propagator,
    x0: np.ndarray,
    x1: np.ndarray,
    n_steps: int = 5000,
    batch_size: int = 256,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 250,
    seed: int = 0,
    progress: bool = True,
    stop_at: int | None = None,
) -> TrainResult:
    """Fit q(x1 | x0) by maximum likelihood (Adam, cosine LR decay); resume from `checkpoint`.

    x0, x1: (N, n, 3) Angstrom. A checkpoint of a model with another config is refused. The last val_fraction of pairs is held out (no shuffling before
    the split, so held-out pairs come from the end of the data, less correlated with training).
    stop_at pauses after that many total steps (checkpointed), e.g. to train in time slices.
    """
    x0t = torch.as_tensor(np.asarray(x0), dtype=torch.float64)
    x1t = torch.as_tensor(np.asarray(x1), dtype=torch.float64)
    if x0t.shape != x1t.shape or x0t.ndim != 3:
        raise ValueError(f"x0 and x1 must both be (N, n, 3); got {x0t.shape}, {x1t.shape}")
    # The Z-matrix transform and the context features depend on data only: compute them once
    # (in float64), so that each training step is just the flow.
    model = model.double()
    with torch.no_grad():
        s_all = model.flow_variable(x1t, x0t).float()
        f_all = model.features(x0t).float()
    n_val = max(1, int(len(x0t) * val_fraction))
    s_tr, f_tr, s_va, f_va = s_all[:-n_val], f_all[:-n_val], s_all[-n_val:], f_all[-n_val:]
    model = model.float().train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = lambda s: 0.5 * lr * (1 + np.cos(np.pi * min(s, n_steps) / n_steps))  # noqa: E731
    step, wall0 = 0, 0.0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state.get("config", asdict(model.config)) != asdict(model.config):
            # Resuming another molecule's or architecture's run would fail deep in torch (or,
            # worse, succeed with mismatched data): refuse by name.
            raise ValueError(
                f"checkpoint {ckpt} belongs to a propagator with other settings; delete it to "
                "start over"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, wall0 = int(state["step"]), float(state["wall_s"])
        torch.set_rng_state(state["torch_rng"])
    else:
        torch.manual_seed(seed)
        with torch.no_grad():
            model.set_normalisation(s_tr)
    dim = 3 * model.config.n_atoms
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, initial=step, desc="train propagator", unit="step")
    t0 = time.perf_counter()
    loss_ema = float("nan")
    end = n_steps if stop_at is None else min(n_steps, stop_at)
    while step < end:
        idx = torch.randint(0, len(s_tr), (batch_size,))
        for g in opt.param_groups:
            g["lr"] = sched(step)
        loss = -model.log_prob_s(s_tr[idx], f_tr[idx]).mean() / dim
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        step += 1
        loss_ema = loss.item() if np.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * loss.item()
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(nll=f"{loss_ema:.3f}")
        if ckpt is not None and (step % checkpoint_every == 0 or step == end):
            _save_checkpoint(ckpt, model, opt, step, wall0 + time.perf_counter() - t0)
    if bar is not None:
        bar.close()
    model.eval()
    with torch.no_grad():
        val = -model.log_prob_s(s_va, f_va).mean().item() / dim
    return TrainResult(step, loss_ema, val, wall0 + time.perf_counter() - t0)
