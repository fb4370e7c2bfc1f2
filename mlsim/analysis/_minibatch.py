"""Shared checks and mini-batch training loop of the analysis package's small classifiers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["check_class_inputs", "fit_cross_entropy"]


def check_class_inputs(
    x: np.ndarray, y: np.ndarray, n_states: int, inputs: str, targets: str
) -> None:
    """Raise ValueError if x has NaN/inf or a class index in y is outside [0, n_states)."""
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{inputs} contain NaN or inf")
    if y.min() < 0 or y.max() >= n_states:
        raise ValueError(f"{targets} must be in [0, {n_states})")


def fit_cross_entropy(
    module: torch.nn.Module,
    loss_fn: torch.nn.Module,
    tx: torch.Tensor,
    ty: torch.Tensor,
    n_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> list[float]:
    """Train `module` (Adam, cosine-annealed rate, shuffled mini-batches); mean loss per epoch.

    The module is left in eval mode. Shuffling uses its own generator seeded with `seed`, so the
    batch order does not depend on (or disturb) the global RNG that initialised the weights.
    """
    import torch

    opt = torch.optim.Adam(module.parameters(), lr=learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_epochs)
    gen = torch.Generator().manual_seed(seed)
    history = []
    module.train()
    for _ in range(n_epochs):
        perm = torch.randperm(len(tx), generator=gen)
        total = 0.0
        for start in range(0, len(tx), batch_size):
            b = perm[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(module(tx[b]), ty[b])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        sched.step()
        history.append(total / len(tx))
    module.eval()
    return history
