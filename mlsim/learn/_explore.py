"""Exploration: Langevin MD walkers driven by the current committee, recording confident-enough frames.

Each walker runs ASE Langevin dynamics with the committee's mean forces and, every `record_every`
steps, records the frame with its maximum per-atom force spread. A walker stops early when the
spread passes `upper` (it has left the region where the committee can be trusted, so its later
frames would be unphysical) or its geometry becomes unphysical (mlsim's GeometryGuard: a bond
broken or formed, atoms too close): both are reported, neither is an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlsim._geometry_guard import GeometryGuard
from mlsim.data import Structure
from mlsim.learn._config import LearnConfig

__all__ = ["WalkerResult", "explore"]


@dataclass
class WalkerResult:
    """What one walker did: its frames, how far it got and why it stopped."""

    temperature_K: float
    walker: int
    steps_run: int
    stop_reason: str  # "completed", "uncertainty" or "geometry: ..."
    max_uncertainty: float  # eV/A, over every recorded check
    frames: list[Structure] = field(default_factory=list)
    forces_mean: list[np.ndarray] = field(default_factory=list)  # (n, 3) eV/A per frame
    forces_std: list[np.ndarray] = field(default_factory=list)  # (n,) eV/A per frame

    def summary(self) -> dict[str, Any]:
        """JSON-safe summary without the frames."""
        return {
            "temperature_K": self.temperature_K,
            "walker": self.walker,
            "steps_run": self.steps_run,
            "stop_reason": self.stop_reason,
            "max_uncertainty": self.max_uncertainty,
            "n_frames": len(self.frames),
        }


def _calculator(model: Any) -> Any:
    """MLCalculator of the committee, inference-optimised where possible.

    optimize_for_inference makes a PaiNN committee's MD step ~9x cheaper with the same energies,
    forces and spreads to float rounding (benchmarks/committee.py); other architectures run as
    they are.
    """
    from mlsim.ase import MLCalculator

    try:
        return MLCalculator(model, fast=True)
    except TypeError:  # an architecture optimize_for_inference does not handle
        return MLCalculator(model)


def explore(
    model: Any,
    starts: list[Structure],
    cfg: LearnConfig,
    iteration: int,
    progress: bool = True,
) -> list[WalkerResult]:
    """Run every walker of one iteration (temperatures x walkers) with the committee `model`."""
    from tqdm import tqdm

    from mlsim.ase import MLCalculator
    from mlsim.ase._langevin import langevin_nvt

    calc = model if isinstance(model, MLCalculator) else _calculator(model)
    if not calc.is_ensemble:
        raise ValueError("exploration needs a committee model (train with `ensemble: 2` or more)")
    n_checks = cfg.steps // cfg.record_every
    results = []
    bar = tqdm(
        total=len(cfg.temperatures) * cfg.walkers * n_checks,
        desc=f"explore {iteration}",
        unit="check",
        file=sys.stderr,
        disable=not progress,
    )
    for t_idx, temp in enumerate(cfg.temperatures):
        for w in range(cfg.walkers):
            start = starts[(t_idx * cfg.walkers + w) % len(starts)]
            rng = np.random.default_rng([cfg.seed, iteration, t_idx, w])
            atoms = start.to_atoms()
            atoms.info.clear()
            atoms.calc = calc
            dyn = langevin_nvt(atoms, temp, cfg.timestep_fs, cfg.friction_per_fs, rng)
            guard = GeometryGuard.from_structure(
                atoms.numbers, atoms.positions, start.cell, start.pbc, min_distance=cfg.min_distance
            )
            res = WalkerResult(float(temp), w, 0, "completed", 0.0)
            for check in range(n_checks):
                dyn.run(cfg.record_every)
                res.steps_run = (check + 1) * cfg.record_every
                bar.update(1)
                # Langevin's last force call was at the current positions: results are current.
                u = np.asarray(calc.results["forces_uncertainty"])
                u_max = float(u.max()) if u.size else 0.0
                res.max_uncertainty = max(res.max_uncertainty, u_max)
                problem = guard.check(atoms.positions, start.cell, start.pbc)
                if problem is not None:
                    res.stop_reason = f"geometry: {problem}"
                    break
                if u_max >= cfg.upper:
                    res.stop_reason = "uncertainty"
                    break
                res.frames.append(
                    Structure(
                        numbers=atoms.numbers.copy(),
                        positions=atoms.positions.copy(),
                        cell=start.cell,
                        pbc=start.pbc,
                        info={
                            "temperature_K": float(temp),
                            "iteration": iteration,
                            "walker": w,
                            "time_fs": round(res.steps_run * cfg.timestep_fs, 6),
                            "max_force_uncertainty": u_max,
                            "energy_uncertainty": float(calc.results["uncertainty"]),
                        },
                    )
                )
                res.forces_mean.append(np.array(calc.results["forces"]))
                res.forces_std.append(u.copy())
            if res.stop_reason != "completed":
                bar.update(n_checks - res.steps_run // cfg.record_every)
            results.append(res)
    bar.close()
    return results
