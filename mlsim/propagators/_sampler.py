"""Metropolis-Hastings with a learned proposal (exact) and an unadjusted exploration mode.

Acceptance of x' ~ q(. | x):  min(1, pi(x') q(x | x') / (pi(x) q(x' | x))),  pi = exp(-U / kT).
Proposals are drawn B at a time from the current state and tested in order; the first accepted
one moves the chain and the rest are discarded. That is exactly sequential MH (the proposals from
a fixed state are i.i.d.), but it lets the flow and the energy run batched. A proposal may carry a
label (which block of torsions it moved): the reverse density is evaluated for the same label,
and the chain records it, so acceptance can be broken down by move type.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ChainResult", "metropolis_hastings", "run_propagator_chain"]

ProposeFn = Callable[[np.ndarray, int], tuple]  # (x', log q) or (x', log q, labels)
ReverseFn = Callable[..., np.ndarray]  # (x', x) or (x', x, labels) -> log q(x | x')
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
    moves: np.ndarray | None = None  # per-step label of the tested proposal, when it has one

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
    log_target_x0: float | None = None,
    lazy_target: bool = False,
) -> ChainResult:
    """Run n_steps of MH (or, with exploration=True, accept every proposal that is finite and
    does not lower log pi by more than max_log_target_drop; this chain is *not* unbiased).

    propose(x, B) -> (B proposals, log q(x'|x)); log_q_reverse(x', x) -> log q(x | x') per row.
    A propose that returns (x', log q, labels) gets log_q_reverse(x', x, labels) instead.
    log_target_x0: log pi(x0) when the caller knows it (saves one evaluation). lazy_target:
    evaluate log pi one proposal at a time and stop at the first acceptance (for targets that
    gain nothing from batches, such as an OpenMM Context); the chain is the same either way.
    """
    if n_steps < 0 or batch < 1:
        raise ValueError("n_steps must be >= 0 and batch >= 1")
    x = np.array(x0, dtype=np.float64)
    lp = float(log_target(x[None])[0]) if log_target_x0 is None else float(log_target_x0)
    if not np.isfinite(lp):
        raise ValueError("initial state has zero target density (non-finite energy)")
    states = np.empty((n_steps + 1,) + x.shape)
    states[0] = x
    logs = np.empty(n_steps + 1)
    logs[0] = lp
    acc = np.zeros(n_steps, dtype=bool)
    moves = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, desc="exploration" if exploration else "MH", unit="step")
    t0 = time.perf_counter()
    step = 0
    while step < n_steps:
        b = 1 if exploration else min(batch, n_steps - step)
        xp, log_fwd, *labels = propose(x, b)
        if labels and moves is None:
            moves = np.full(n_steps, -1, dtype=np.int64)
        lazy = lazy_target and not exploration
        lp_new = np.full(b, np.nan) if lazy else np.asarray(log_target(xp), dtype=np.float64)
        if exploration:
            ok = np.isfinite(lp_new[0]) and lp_new[0] - lp >= -max_log_target_drop
        else:
            log_rev = np.asarray(log_q_reverse(xp, x, *labels), dtype=np.float64)
            log_fwd = np.asarray(log_fwd, dtype=np.float64)
        u = rng.random(b)
        for i in range(b):
            if exploration:
                take = bool(ok)
            else:
                if lazy:
                    lp_new[i] = float(log_target(xp[i : i + 1])[0])
                ratio = lp_new[i] + log_rev[i] - lp - log_fwd[i]
                take = bool(np.isfinite(ratio) and np.log(u[i]) < ratio)
            if take:
                x, lp = xp[i].copy(), float(lp_new[i])
                acc[step] = True
            if labels:
                moves[step] = labels[0][i]
            step += 1
            states[step] = x
            logs[step] = lp
            if take:
                break
        if bar is not None:
            bar.update(min(i + 1, b))
    if bar is not None:
        bar.close()
    return ChainResult(states, acc, logs, time.perf_counter() - t0, exploration, moves=moves)


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
    with a trained Propagator, or a TransferPropagator bound to the molecule
    (``TransferPropagator.bind(molecule)``); positions in Angstrom.

    Without `hmc`: n_steps MH steps with the model's proposal (mode "full" only, since a
    dihedral-only proposal alone is not ergodic). With `hmc` (HMCKernel or TargetHMC, see
    make_hmc): n_steps cycles of
    [mh_per_cycle learned-proposal MH steps, one HMC move]; a composition of pi-invariant
    kernels, recorded once per cycle. The flow runs in float64 so that forward and reverse
    densities agree to round-off.
    """
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(seed)
    if hasattr(model, "propose") and hasattr(model, "torsions"):  # a bound torsion proposal
        if hmc is None and not exploration:
            raise ValueError(
                "a torsion proposal is not ergodic on its own (bonds and angles never move); "
                "pass an HMC kernel (make_hmc)"
            )
        if model.n_atoms != target.n_atoms:
            raise ValueError(
                f"the proposal is bound to a molecule of {model.n_atoms} atoms, the target has "
                f"{target.n_atoms}"
            )
        model.refresh()
        prop_rng = np.random.default_rng([int(seed), 1])  # proposals' own stream

        def propose(x: np.ndarray, b: int):
            return model.propose(x, b, prop_rng)

        reverse = model.log_prob_reverse

    elif hasattr(model, "bind"):
        raise ValueError("bind the transfer propagator to the molecule first: model.bind(mol)")
    else:
        if model.config.mode == "dihedrals" and hmc is None and not exploration:
            raise ValueError(
                "a dihedral-only proposal is not ergodic on its own; pass an HMCKernel"
            )
        model = model.double().eval()

        def propose(x: np.ndarray, b: int):
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
        lazy_target=not getattr(target, "batched", False),
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
    moves = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, desc="propagator+HMC", unit="cycle")
    t0 = time.perf_counter()
    for c in range(n_steps):
        res = metropolis_hastings(
            x, mh_per_cycle, propose, reverse, log_target, rng, batch=mh_per_cycle,
            log_target_x0=logs[c], **kw,
        )  # fmt: skip
        acc[c] = res.accepted
        if res.moves is not None:
            if moves is None:
                moves = np.full((n_steps, mh_per_cycle), -1, dtype=np.int64)
            moves[c] = res.moves
        x, _, u = hmc.step(res.states[-1], u0=-res.log_target[-1] / target.beta)
        states[c + 1] = x
        logs[c + 1] = -target.beta * u
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    return ChainResult(
        states, acc.ravel(), logs, wall, exploration, hmc.acceptance_rate,
        None if moves is None else moves.ravel(),
    )  # fmt: skip
