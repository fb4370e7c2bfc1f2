"""Cost of one energy+force evaluation per method, timed side by side on the same structures."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlsim.data import Structure
from suite._methods import Method, Skipped

__all__ = ["run_cost", "time_method"]


def time_method(
    method: Method,
    structures: Sequence[Structure],
    min_seconds: float = 1.0,
    max_evals: int = 200,
    warmup: int = 5,
) -> dict[str, float]:
    """Time method.evaluate over the structures (cycled) until min_seconds or max_evals; median s/eval.

    The first `warmup` calls are not counted: TorchScript's profiling executor re-optimises the
    graph during the first ~3 calls (each 10-100x slower than steady state), and other back-ends
    pay imports and allocations there. DFT uses warmup=0: one call is already seconds.
    """
    if not structures:
        raise ValueError("no structures to time")
    for _ in range(warmup):
        method.evaluate(structures[0])
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < max_evals and (i < len(structures) or time.perf_counter() - start < min_seconds):
        s = structures[i % len(structures)]
        t0 = time.perf_counter()
        method.evaluate(s)
        times.append(time.perf_counter() - t0)
        i += 1
    t = np.array(times)
    return {
        "seconds_per_eval": float(np.median(t)),
        "mean_s": float(t.mean()),
        "n_evals": int(t.size),
    }


def run_cost(
    factories: dict[str, Callable[[], Method]],
    structures: Sequence[Structure],
    n_structures: dict[str, int] | None = None,
    min_seconds: float = 1.0,
    baseline_order: Sequence[str] = ("mlsim", "xtb", "mmff94"),
    progress: bool = True,
) -> dict[str, Any]:
    """Time every method; ratios are relative to the first available of baseline_order (the mlsim model)."""
    n_structures = n_structures or {}
    methods: dict[str, Any] = {}
    for key, factory in factories.items():
        try:
            method = factory()
        except Skipped as exc:
            methods[key] = {"status": "skipped", "reason": str(exc)}
            continue
        subset = list(structures[: n_structures.get(key, len(structures))])
        expensive = key == "dft"
        if progress:
            print(
                f"  cost: {method.label} on {len(subset)} structure(s)", file=sys.stderr, flush=True
            )
        try:
            timing = time_method(
                method,
                subset,
                min_seconds=0.0 if expensive else min_seconds,
                max_evals=len(subset) if expensive else 200,
                warmup=0 if expensive else 5,
            )
        except Exception as exc:  # report and carry on with the other methods
            methods[key] = {"label": method.label, "status": "failed", "reason": repr(exc)}
            continue
        methods[key] = {"label": method.label, "status": "ok", "notes": method.notes, **timing}
    baseline = next((k for k in baseline_order if methods.get(k, {}).get("status") == "ok"), None)
    if baseline is not None:
        t0 = methods[baseline]["seconds_per_eval"]
        for m in methods.values():
            if m.get("status") == "ok":
                m["ratio_to_baseline"] = m["seconds_per_eval"] / t0
    return {
        "baseline": baseline,
        "n_atoms": len(structures[0]) if structures else 0,
        "methods": methods,
    }
