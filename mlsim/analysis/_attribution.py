"""Integrated gradients (Sundararajan et al. 2017): which input features decide a network's output.

For input x, baseline x', and output f, the attribution of feature i is
    IG_i = (x_i - x'_i) * integral_0^1 df/dx_i (x' + a (x - x')) da,
evaluated here with the trapezoid rule on ``n_steps`` intervals. The attributions satisfy
completeness, sum_i IG_i = f(x) - f(x'), up to the quadrature error, which is returned so callers
can check it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["integrated_gradients", "state_attributions"]


def integrated_gradients(
    module,
    x: np.ndarray,
    baseline: np.ndarray,
    target: int | np.ndarray,
    n_steps: int = 64,
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Attributions (N, F) of output ``target`` (per row or one index) and completeness gap (N,).

    ``module`` maps (M, F) float32 tensors to (M, C) outputs; the gap is
    sum_i IG_i - (f(x) - f(baseline)) for each row, which tends to 0 as n_steps grows.
    """
    import torch

    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    base = np.broadcast_to(np.asarray(baseline, dtype=np.float64), x.shape)
    if x.ndim != 2:
        raise ValueError(f"x must be (N, F), got shape {x.shape}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    tgt = np.broadcast_to(np.asarray(target, dtype=np.int64), (x.shape[0],))
    alphas = np.linspace(0.0, 1.0, n_steps + 1)
    weights = np.full(n_steps + 1, 1.0 / n_steps)
    weights[[0, -1]] *= 0.5  # trapezoid rule
    delta = x - base
    n, f = x.shape
    grads = np.zeros((n, f))
    outputs = np.zeros((n, 2))
    # Process frames in chunks so the (frames x steps) path batch stays bounded in memory.
    rows_per_chunk = max(1, batch_size // (n_steps + 1))
    for s in range(0, n, rows_per_chunk):
        sl = slice(s, min(n, s + rows_per_chunk))
        path = base[sl, None, :] + alphas[None, :, None] * delta[sl, None, :]  # (m, K+1, F)
        m = path.shape[0]
        tp = torch.tensor(path.reshape(-1, f), dtype=torch.float32, requires_grad=True)
        out = module(tp)
        idx = torch.as_tensor(np.repeat(tgt[sl], n_steps + 1))
        sel = out.gather(1, idx[:, None]).squeeze(1)
        (g,) = torch.autograd.grad(sel.sum(), tp)
        g = g.detach().numpy().astype(np.float64).reshape(m, n_steps + 1, f)
        grads[sl] = np.einsum("k,mkf->mf", weights, g)
        vals = sel.detach().numpy().reshape(m, n_steps + 1)
        outputs[sl] = vals[:, [0, -1]]
    attributions = delta * grads
    gap = attributions.sum(1) - (outputs[:, 1] - outputs[:, 0])
    return attributions, gap


def state_attributions(
    module,
    x: np.ndarray,
    labels: np.ndarray,
    baseline: np.ndarray,
    feature_names: Sequence[str],
    state_names: Sequence[str],
    top: int = 5,
    n_steps: int = 128,
    max_frames_per_state: int = 300,
    seed: int = 0,
) -> dict[str, list[dict[str, float | str]]]:
    """For each state, the features with the largest mean IG toward that state's logit.

    Averaged over (up to ``max_frames_per_state``) frames labelled with the state; positive values
    push toward the state. Returns {state: [{"feature", "attribution"}, ...]} sorted by |value|.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x)
    labels = np.asarray(labels)
    out: dict[str, list[dict[str, float | str]]] = {}
    for k, name in enumerate(state_names):
        rows = np.flatnonzero(labels == k)
        if rows.size == 0:
            continue
        if rows.size > max_frames_per_state:
            rows = rng.choice(rows, max_frames_per_state, replace=False)
        attr, _ = integrated_gradients(module, x[rows], baseline, k, n_steps=n_steps)
        mean = attr.mean(0)
        order = np.argsort(-np.abs(mean))[:top]
        out[name] = [
            {"feature": str(feature_names[i]), "attribution": float(mean[i])} for i in order
        ]
    return out
