"""Metropolis-Hastings with a learned proposal (exact) and an unadjusted exploration mode.

Acceptance of x' ~ q(. | x):  min(1, pi(x') q(x | x') / (pi(x) q(x' | x))),  pi = exp(-U / kT).
Proposals are drawn B at a time from the current state and tested in order; the first accepted
one moves the chain and the rest are discarded. That is exactly sequential MH (the proposals from
a fixed state are i.i.d.), but it lets the flow and the energy run batched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ChainResult", "metropolis_hastings", "run_propagator_chain"]

ProposeFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
ReverseFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
LogTargetFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class ChainResult:
    """A chain: states (n_steps + 1, ...) including x0, per-step acceptance, log pi, wall time."""

    states: np.ndarray
    accepted: np.ndarray
    log_target: np.ndarray
    wall_s: float
    exploration: bool
    hmc_acceptance: float | None = None  # set when the chain interleaves HMC moves

    @property
    def acceptance_rate(self) -> float:
        """Fraction of accepted proposals."""
        return float(self.accepted.mean()) if self.accepted.size else 0.0


def metropolis_hastings(
    x0: np.ndarray,
    n_steps: int,
    propose: ProposeFn,
    log_q_reverse: ReverseFn,
    log_target: LogTargetFn,
    rng: np.random.Generator,
    batch: int = 16,
    exploration: bool = False,
    max_log_target_drop: float = np.inf,
    progress: bool = False,
) -> ChainResult:
    """Run n_steps of MH (or, with exploration=True, accept every proposal that is finite and
    does not lower log pi by more than max_log_target_drop; this chain is *not* unbiased).

    propose(x, B) -> (B proposals, log q(x'|x)); log_q_reverse(x', x) -> log q(x | x') per row.
    """
    if n_steps < 0 or batch < 1:
        raise ValueError("n_steps must be >= 0 and batch >= 1")
    x = np.array(x0, dtype=np.float64)
    lp = float(log_target(x[None])[0])
    if not np.isfinite(lp):
        raise ValueError("initial state has zero target density (non-finite energy)")
    states = np.empty((n_steps + 1,) + x.shape)
    states[0] = x
    logs = np.empty(n_steps + 1)
    logs[0] = lp
    acc = np.zeros(n_steps, dtype=bool)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, desc="exploration" if exploration else "MH", unit="step")
    t0 = time.perf_counter()
    step = 0
    while step < n_steps:
        b = 1 if exploration else min(batch, n_steps - step)
        xp, log_fwd = propose(x, b)
        lp_new = np.asarray(log_target(xp), dtype=np.float64)
        if exploration:
            ok = np.isfinite(lp_new[0]) and lp_new[0] - lp >= -max_log_target_drop
            ratios, log_rev = None, None
        else:
            log_rev = np.asarray(log_q_reverse(xp, x), dtype=np.float64)
            ratios = lp_new + log_rev - lp - np.asarray(log_fwd, dtype=np.float64)
        u = rng.random(b)
        for i in range(b):
            if exploration:
                take = bool(ok)
            else:
                take = bool(np.isfinite(ratios[i]) and np.log(u[i]) < ratios[i])
            if take:
                x, lp = xp[i].copy(), float(lp_new[i])
                acc[step] = True
            step += 1
            states[step] = x
            logs[step] = lp
            if take:
                break
        if bar is not None:
            bar.update(min(i + 1, b))
    if bar is not None:
        bar.close()
    return ChainResult(states, acc, logs, time.perf_counter() - t0, exploration)


def run_propagator_chain(
    model,
    target,
    x0_angstrom: np.ndarray,
    n_steps: int,
    seed: int = 0,
    batch: int = 16,
    exploration: bool = False,
    max_energy_rise_ev: float = np.inf,
    hmc=None,
    mh_per_cycle: int = 8,
    progress: bool = False,
) -> ChainResult:
    """Sample the Boltzmann density of `target` (any Target: OpenMMTarget, ModelTarget, ...)
    with a trained Propagator; positions in Angstrom.

    Without `hmc`: n_steps MH steps with the model's proposal (mode "full" only, since a
    dihedral-only proposal alone is not ergodic). With `hmc` (HMCKernel or TargetHMC, see
    make_hmc): n_steps cycles of
    [mh_per_cycle learned-proposal MH steps, one HMC move]; a composition of pi-invariant
    kernels, recorded once per cycle. The flow runs in float64 so that forward and reverse
    densities agree to round-off.
    """
    import torch

    if model.config.mode == "dihedrals" and hmc is None and not exploration:
        raise ValueError("a dihedral-only proposal is not ergodic on its own; pass an HMCKernel")
    model = model.double().eval()
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(seed)

    def propose(x: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            xt = torch.as_tensor(x, dtype=torch.float64)[None].expand(b, -1, -1)
            xn, lq = model.sample(xt, gen)
        return xn.numpy(), lq.numpy()

    def reverse(xp: np.ndarray, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            xo = torch.as_tensor(x, dtype=torch.float64)[None].expand(xp.shape[0], -1, -1)
            return model.log_prob(xo, torch.as_tensor(xp, dtype=torch.float64)).numpy()

    def log_target(xb: np.ndarray) -> np.ndarray:
        return -target.beta * target.energy(xb)

    kw = dict(
        exploration=exploration,
        max_log_target_drop=target.beta * max_energy_rise_ev,
    )
    if hmc is None:
        return metropolis_hastings(
            x0_angstrom,
            n_steps,
            propose,
            reverse,
            log_target,
            rng,
            batch=batch,
            progress=progress,
            **kw,
        )
    x = np.array(x0_angstrom, dtype=np.float64)
    states = np.empty((n_steps + 1,) + x.shape)
    states[0] = x
    logs = np.empty(n_steps + 1)
    logs[0] = float(log_target(x[None])[0])
    acc = np.zeros((n_steps, mh_per_cycle), dtype=bool)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, desc="propagator+HMC", unit="cycle")
    t0 = time.perf_counter()
    for c in range(n_steps):
        res = metropolis_hastings(
            x, mh_per_cycle, propose, reverse, log_target, rng, batch=mh_per_cycle, **kw
        )
        acc[c] = res.accepted
        x, _, u = hmc.step(res.states[-1])
        states[c + 1] = x
        logs[c + 1] = -target.beta * u
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    return ChainResult(states, acc.ravel(), logs, wall, exploration, hmc.acceptance_rate)
