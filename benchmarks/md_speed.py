"""MD speed of mlsim models, one benchmark, one JSON (benchmarks/results/md_speed.json).

Three sections (suite/_md.py has the details of the first two):
  alanine   OpenMM Langevin MD of alanine dipeptide: Amber14 (flexible 1 fs, HBonds 2 fs) vs an
            mlsim model (trained here on GFN2-xTB labels unless --md-model) on TorchForce and
            PythonForce: steps/s, ns/day, slowdown vs Amber14.
  engines   one model (--model, default the shipped ethanol model) raw (forward + backward), in
            OpenMM (TorchForce, PythonForce) and in ASE (MLCalculator) on ethanol and a periodic
            water box: steps per CPU-second and overhead vs raw.
  alanine_fast  (--fast) the same alanine dipeptide MD (vacuum, LangevinMiddle, 1 fs, one OpenMM
            and one torch thread) with a model from mlsim.models.optimize_for_inference on
            TorchForce and PythonForce, beside the original model on TorchForce and Amber14, all
            in one run, interleaved rounds: ns/day by wall clock and by process CPU time. The
            model is a PaiNN of the shipped size (32 features, 2 interactions, 5 A) with random
            weights unless --md-model; speed does not depend on the weights, but random forces
            would tear the molecule apart and change its pair count, so Amber14's bond stretches
            (a HarmonicBondForce, ~1% of the step) hold it together. Writes only its own key
            into the JSON (the other sections are kept).

    .venv/bin/python benchmarks/md_speed.py                 # first two sections (what `mlsim bench --only md` runs)
    .venv/bin/python benchmarks/md_speed.py --engines-only --systems ethanol --model M.pt --out x.json
    .venv/bin/python benchmarks/md_speed.py --fast [--seconds 3 --rounds 3]

`mlsim bench --only md` runs the first two and also rebuilds report.md. Sections already in the
JSON that a run does not produce are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# benchmarks/ (this script's folder) is on sys.path, so the suite next to it imports.
from suite._md import ENGINE_SYSTEMS, run_md_speed
from suite._report import md_speed_markdown
from suite._runner import QUICK_DIR, RESULTS, BenchConfig, md_config, run_part, write_json


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its tables, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (tiny, no training)")
    ap.add_argument("--model", type=Path, help="model for the engines section")
    ap.add_argument("--md-model", type=Path, help="alanine dipeptide model (default: train one)")
    ap.add_argument("--engines-only", action="store_true", help="skip the alanine section")
    ap.add_argument("--alanine-only", action="store_true", help="skip the engines section")
    ap.add_argument(
        "--systems", nargs="+", choices=list(ENGINE_SYSTEMS), help="engines section: systems"
    )
    ap.add_argument("--steps", type=int, help="engines: steps per round on ethanol (default 200)")
    ap.add_argument("--box-steps", type=int, help="engines: steps per round on the water box (5)")
    ap.add_argument("--rounds", type=int, help="engines: interleaved rounds (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenMM CPU threads")
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/md_speed.json)")
    ap.add_argument("--no-progress", action="store_true", help="no progress output")
    ap.add_argument("--fast", action="store_true", help="only the alanine_fast section")
    ap.add_argument("--seconds", type=float, default=3.0, help="alanine_fast: seconds per round")
    args = ap.parse_args(argv)
    if args.fast:
        return fast_main(args)
    cfg = BenchConfig(quick=args.quick, md_model=args.md_model, threads=args.threads)
    cfg.progress = not args.no_progress
    if args.model is not None:
        cfg.model = args.model
    md = md_config(cfg)
    md.alanine, md.engines = not args.engines_only, not args.alanine_only
    if args.rounds is not None:
        md.rounds = args.rounds
    asked = {"ethanol": args.steps, "water_box": args.box_steps}
    default = {"ethanol": 20 if args.quick else 200, "water_box": 5}
    md.systems = {
        name: asked[name] if asked[name] is not None else default[name]
        for name in (args.systems or md.systems)
    }
    sec = run_part("md", cfg, lambda _: run_md_speed(md))
    out = args.out or (QUICK_DIR if args.quick else RESULTS) / "md_speed.json"
    write_json(out, {**_existing(out), **sec})
    print("\n".join(md_speed_markdown(sec)))
    print(f"wrote {out} (`mlsim bench --only report` adds it to report.md)", file=sys.stderr)
    failed = [k for k in ("alanine", "engines") if sec.get(k, {}).get("status") == "failed"]
    return 1 if sec["status"] == "failed" or failed else 0


def _existing(path: Path) -> dict[str, Any]:
    """The sections already in the JSON file (kept when a run writes only some of them)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _random_painn(seed: int = 0) -> Any:
    """A PaiNN of the shipped size (32 features, 2 interactions, 16 Bessel, 5 A), random weights."""
    import torch

    from mlsim.models import PaiNNModel

    torch.manual_seed(seed)
    model = PaiNNModel([1, 6, 7, 8], cutoff=5.0, features=32, num_interactions=2, num_rbf=16)
    return torch.jit.script(model.eval())


def _ml_system(amber: Any, model: Any, backend: str, hold_bonds: bool) -> Any:
    """An OpenMM System of the dipeptide's particles with the mlsim force (and Amber's bonds)."""
    import openmm

    from mlsim.openmm import create_force

    system = openmm.System()
    for k in range(amber.getNumParticles()):
        system.addParticle(amber.getParticleMass(k))
    numbers = [a.element.atomic_number for a in _alanine_topology().atoms()]
    system.addForce(create_force(model, numbers, backend=backend))
    if hold_bonds:
        bonds = next(f for f in amber.getForces() if isinstance(f, openmm.HarmonicBondForce))
        system.addForce(openmm.XmlSerializer.clone(bonds))
    return system


def _alanine_topology() -> Any:
    """The dipeptide's OpenMM topology (mlsim.testsystems)."""
    from mlsim.testsystems import alanine_dipeptide

    return alanine_dipeptide(solvent="vacuum", constraints=None).topology


def _pairs_within(context: Any, cutoff_nm: float) -> int:
    """Atom pairs closer than the cutoff now (the ML model's work is proportional to it)."""
    pos = np.asarray(context.getState(getPositions=True).getPositions(asNumpy=True)._value)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    return int((d[np.triu_indices(len(pos), 1)] < cutoff_nm).sum())


def run_alanine_fast(
    md_model: Path | None, seconds: float, rounds: int, threads: int, progress: bool
) -> dict[str, Any]:
    """Interleaved Langevin MD of alanine dipeptide: Amber14 vs mlsim fast/original models."""
    import torch

    from mlsim.models import load_model, optimize_for_inference
    from mlsim.models._fast import kernel_available
    from mlsim.openmm._engine import (
        langevin_integrator,
        make_context,
        set_positions,
        set_velocities,
    )
    from mlsim.testsystems import alanine_dipeptide

    torch.set_num_threads(threads)
    ms = alanine_dipeptide(solvent="vacuum", constraints=None)
    random_weights = md_model is None
    original = _random_painn() if random_weights else load_model(md_model)
    ok, why = kernel_available()
    fast = optimize_for_inference(original, backend="cpp" if ok else "torch")
    systems = {
        "amber14": ("Amber14 (vacuum, flexible, 1 fs)", ms.system),
        "mlsim_fast_torch": (
            "mlsim fast (optimize_for_inference) via TorchForce, 1 fs",
            _ml_system(ms.system, fast, "torch", random_weights),
        ),
        "mlsim_fast_python": (
            "mlsim fast (optimize_for_inference) via PythonForce, 1 fs",
            _ml_system(ms.system, fast, "python", random_weights),
        ),
        "mlsim_original_torch": (
            "mlsim original model via TorchForce, 1 fs",
            _ml_system(ms.system, original, "torch", random_weights),
        ),
    }
    contexts = {}
    for key, (_, system) in systems.items():
        ctx = make_context(system, langevin_integrator(1.0, 300.0, 1.0, seed=1), "CPU", threads)
        set_positions(ctx, ms.positions)
        set_velocities(ctx, 300.0, seed=1)
        ctx.getIntegrator().step(50)  # TorchScript profiling runs, kernel set-up: not timed
        contexts[key] = ctx
    cutoff_nm = float(original.cutoff) / 10.0
    pairs_start = {k: _pairs_within(c, cutoff_nm) for k, c in contexts.items()}
    # Steps per round from a short probe, so that each round takes about `seconds`.
    steps = {}
    for key, ctx in contexts.items():
        t0 = time.perf_counter()
        ctx.getIntegrator().step(20)
        steps[key] = max(20, int(seconds * 20 / max(time.perf_counter() - t0, 1e-6)))
    samples: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in contexts}
    for r in range(rounds):
        for key, ctx in contexts.items():
            if progress:
                print(f"  alanine_fast round {r + 1}/{rounds}: {key}", file=sys.stderr, flush=True)
            c0, t0 = time.process_time(), time.perf_counter()
            ctx.getIntegrator().step(steps[key])
            ctx.getState(getEnergy=True)  # the steps are done when this returns
            samples[key]["cpu"].append((time.process_time() - c0) / steps[key])
            samples[key]["wall"].append((time.perf_counter() - t0) / steps[key])
    runs = {}
    for key, ctx in contexts.items():
        state = ctx.getState(getEnergy=True)
        wall = statistics.median(samples[key]["wall"])
        cpu = statistics.median(samples[key]["cpu"])
        runs[key] = {
            "label": systems[key][0],
            "steps_per_round": steps[key],
            "ms_per_step_wall": wall * 1e3,
            "ms_per_step_cpu": cpu * 1e3,
            "ns_per_day_wall": 86400.0 * 1e-6 / wall,
            "ns_per_day_cpu": 86400.0 * 1e-6 / cpu,
            "ms_per_step_cpu_rounds": [x * 1e3 for x in samples[key]["cpu"]],
            "pairs_within_cutoff_start_end": [pairs_start[key], _pairs_within(ctx, cutoff_nm)],
            "final_potential_kj_mol": state.getPotentialEnergy()._value,
        }
    amber = runs["amber14"]["ms_per_step_cpu"]
    for row in runs.values():
        row["slowdown_vs_amber14_cpu"] = row["ms_per_step_cpu"] / amber
    base = runs["mlsim_original_torch"]["ms_per_step_cpu"]
    for key in ("mlsim_fast_torch", "mlsim_fast_python"):
        runs[key]["speedup_vs_original_cpu"] = base / runs[key]["ms_per_step_cpu"]
    return {
        "status": "ok",
        "system": "alanine dipeptide (ACE-ALA-NME), vacuum, 22 atoms",
        "integrator": "LangevinMiddle, 300 K, 1/ps, 1 fs, CPU platform",
        "threads": threads,
        "rounds": rounds,
        "model": {
            "architecture": "painn",
            "hyperparameters": {"features": 32, "num_interactions": 2, "num_rbf": 16, "cutoff": 5.0}
            if random_weights
            else str(md_model),
            "weights": "random (seed 0): timing only, not a physical potential"
            if random_weights
            else "trained",
            "fast_backend": "cpp (fused C++ kernel)" if ok else f"torch ({why})",
            "held_together_by": "Amber14 HarmonicBondForce (bond stretches only)"
            if random_weights
            else None,
        },
        "note": (
            "medians over interleaved rounds; ns/day from whole integrator.step() calls; cpu = "
            "process CPU time (robust to other jobs on a shared machine), wall = elapsed"
        ),
        "load_average_at_start": os.getloadavg(),
        "pairs_note": (
            "pairs_within_cutoff_start_end: atom pairs within the model's cutoff at the start "
            "and end of the timed MD (231 = every pair of the 22 atoms); the model's work grows "
            "with it, so a random model that pulls the molecule together is timed at the top"
        ),
        "runs": runs,
        "goal_ns_per_day": 150.0,
    }


def fast_main(args: argparse.Namespace) -> int:
    """--fast: run the alanine_fast section and merge it into the JSON."""
    out = args.out or RESULTS / "md_speed.json"
    sec = run_alanine_fast(
        args.md_model,
        0.3 if args.quick else args.seconds,
        args.rounds or (1 if args.quick else 3),
        args.threads,
        not args.no_progress,
    )
    write_json(out, {**_existing(out), "alanine_fast": sec})
    print(
        f"{'run':22s} {'ms/step cpu':>12s} {'ns/day cpu':>11s} {'ns/day wall':>12s} {'x amber':>8s}"
    )
    for key, row in sec["runs"].items():
        print(
            f"{key:22s} {row['ms_per_step_cpu']:12.3f} {row['ns_per_day_cpu']:11.1f} "
            f"{row['ns_per_day_wall']:12.1f} {row['slowdown_vs_amber14_cpu']:8.1f}"
        )
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
