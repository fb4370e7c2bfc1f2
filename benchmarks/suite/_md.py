"""MD speed, one benchmark in two sections, written to one JSON (md_speed.json).

alanine   OpenMM Langevin MD of alanine dipeptide (22 atoms): Amber14 (flexible 1 fs, HBonds 2 fs)
          vs an mlsim model on TorchForce and PythonForce, same integrator, platform and threads:
          steps/s and ns/day, i.e. what the ML potential costs against a classical force field.
engines   the same mlsim model in every engine, on ethanol (9 atoms) and a periodic water box
          (~1,000 atoms): raw model (forward + backward, the floor for any engine), OpenMM
          TorchForce (forces from the module, or autograd by openmm-torch), OpenMM PythonForce and
          ASE (mlsim.ase.MLCalculator with VelocityVerlet): steps/s and overhead per step vs raw.
          Methods are interleaved over several rounds and the best round is kept; speeds are steps
          per second of process CPU time, which the neighbours' load on a shared machine barely
          disturbs (wall-clock steps/s are recorded alongside).
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlsim import units
from mlsim.data import Structure
from suite._methods import Skipped
from suite._paths import shown

__all__ = [
    "ENGINE_SYSTEMS",
    "MDSpeedConfig",
    "ase_runner",
    "langevin_speed",
    "measure",
    "openmm_runner",
    "raw_runner",
    "run_alanine",
    "run_engines",
    "run_md_speed",
]

Runner = Callable[[int], None]  # runner(steps): advance that many MD steps (or model calls)


# --- alanine dipeptide: Amber14 vs mlsim in OpenMM Langevin MD -----------------------------------
def langevin_speed(
    system: Any,
    positions: Any,
    dt_fs: float,
    threads: int = 1,
    platform: str = "CPU",
    min_seconds: float = 3.0,
    warmup_steps: int = 20,
    max_steps: int = 1_000_000,
    temperature_k: float = 300.0,
) -> dict[str, Any]:
    """Run Langevin MD from positions (n, 3) in Angstrom; steps/s and ns/day of whole step() calls.

    Timing starts after a warm-up.
    """
    from mlsim.openmm._engine import (
        degrees_of_freedom,
        langevin_integrator,
        make_context,
        potential_energy_of,
        set_positions,
        set_velocities,
        temperature_of,
    )

    integrator = langevin_integrator(dt_fs, temperature_k, 1.0, seed=1)
    context = make_context(system, integrator, platform, threads=threads)
    set_positions(context, positions)
    set_velocities(context, temperature_k, seed=1)
    # The first steps pay for kernel compilation and TorchScript's profiling re-optimisation.
    integrator.step(warmup_steps)
    steps, chunk = 0, 10
    start = time.perf_counter()
    while steps < max_steps:
        integrator.step(chunk)
        steps += chunk
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
        chunk = min(chunk * 2, 2000)
    elapsed = time.perf_counter() - start
    state = context.getState(getEnergy=True)
    epot = float(units.energy_to_openmm(potential_energy_of(state)))  # kJ/mol, as reported
    if not math.isfinite(epot):
        raise RuntimeError(f"MD blew up: potential energy {epot} after {steps} steps")
    # Instantaneous temperature: a sanity check that the timed trajectory stayed physical.
    temp = temperature_of(state, degrees_of_freedom(system))
    sps = steps / elapsed
    return {
        "platform": platform,
        "threads": threads,
        "dt_fs": dt_fs,
        "steps": steps,
        "seconds": elapsed,
        "steps_per_s": sps,
        "ns_per_day": sps * dt_fs * 86400.0 * 1e-6,
        "final_potential_kj_mol": float(epot),
        "final_temperature_k": float(temp),
    }


def _alanine(constraints: str | None) -> Any:
    """Return mlsim.testsystems.alanine_dipeptide in vacuum, or raise Skipped if it is missing."""
    try:
        from mlsim.testsystems import alanine_dipeptide
    except ImportError as exc:
        raise Skipped(f"mlsim.testsystems.alanine_dipeptide not available: {exc}") from exc
    return alanine_dipeptide(solvent="vacuum", constraints=constraints)


def run_alanine(
    ml_system_factory: Callable[[Any], tuple[list[tuple[str, str, Any]], dict[str, Any]]] | None,
    threads: int = 1,
    min_seconds: float = 3.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Time Amber14 (flexible, 1 fs and HBonds, 2 fs) and the mlsim OpenMM systems side by side.

    ml_system_factory(molecular_system) returns ([(key, label, openmm.System with the ML force)],
    info about the model) or raises Skipped; the ML runs use the same integrator, time step and
    platform as the flexible Amber run, so steps/s compare like for like.
    """
    runs: dict[str, Any] = {}
    ml_info: dict[str, Any] = {}
    flexible = _alanine(None)

    def log(msg: str) -> None:
        """Progress line on stderr."""
        if progress:
            print(f"  md: {msg}", file=sys.stderr, flush=True)

    log("amber14, flexible bonds, 1 fs")
    runs["amber14_flexible"] = {
        "label": "Amber14 (vacuum, flexible, 1 fs)",
        "status": "ok",
        **langevin_speed(
            flexible.system, flexible.positions, 1.0, threads, min_seconds=min_seconds
        ),
    }
    log("amber14, HBonds constraints, 2 fs")
    hb = _alanine("HBonds")
    runs["amber14_hbonds"] = {
        "label": "Amber14 (vacuum, HBonds, 2 fs)",
        "status": "ok",
        **langevin_speed(hb.system, hb.positions, 2.0, threads, min_seconds=min_seconds),
    }
    if ml_system_factory is None:
        runs["mlsim"] = {"status": "skipped", "reason": "not requested"}
    else:
        try:
            ml_runs, ml_info = ml_system_factory(flexible)
            for key, label, ml_system in ml_runs:
                log(label)
                try:
                    res = langevin_speed(
                        ml_system, flexible.positions, 1.0, threads, min_seconds=min_seconds
                    )
                    runs[key] = {"label": label, "status": "ok", **res}
                except Exception as exc:  # e.g. OpenMM NaN error from a bad model: report it
                    runs[key] = {"label": label, "status": "failed", "reason": repr(exc)}
        except Skipped as exc:
            runs["mlsim"] = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:  # training/export broke: keep the Amber numbers, report why
            traceback.print_exc(file=sys.stderr)
            runs["mlsim"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    base = runs["amber14_flexible"]["steps_per_s"]
    for r in runs.values():
        if r.get("status") == "ok":
            r["slowdown_vs_amber14_flexible"] = base / r["steps_per_s"]
    return {
        "system": "alanine dipeptide (ACE-ALA-NME)",
        "n_atoms": flexible.n_atoms,
        "runs": runs,
        "ml_model": ml_info,
    }


# --- one model, every engine: raw vs OpenMM vs ASE ----------------------------------------------
def ethanol() -> Structure:
    """Ethanol at its ASE reference geometry."""
    from ase.build import molecule

    return Structure.from_atoms(molecule("CH3CH2OH"))


def water_box(n_side: int = 7, spacing: float = 3.1, seed: int = 0) -> Structure:
    """n_side^3 randomly oriented waters on a cubic lattice (~1 g/cm^3, 3 n_side^3 atoms)."""
    from ase.build import molecule
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    w = molecule("H2O").positions
    pos, nums = [], []
    for idx in np.ndindex(n_side, n_side, n_side):
        rot = Rotation.random(random_state=rng).as_matrix()
        pos.append(w @ rot.T + spacing * (np.array(idx) + 0.5))
        nums += [8, 1, 1]
    return Structure(
        numbers=nums, positions=np.concatenate(pos), cell=np.eye(3) * spacing * n_side, pbc=True
    )


ENGINE_SYSTEMS: dict[str, Callable[[], Structure]] = {"ethanol": ethanol, "water_box": water_box}


def engine_model(path: Path | None) -> tuple[Any, str]:
    """The given mlsim model file if it exists, else a freshly initialised PaiNN of production size."""
    import torch

    from mlsim.models import PaiNNModel, load_model

    if path is not None and Path(path).is_file():
        return load_model(path), shown(path)
    torch.manual_seed(0)
    model = torch.jit.script(
        PaiNNModel([1, 6, 8], cutoff=5.0, features=64, num_interactions=3).eval()
    )
    # Untrained weights cost exactly what trained ones do; only the speed is measured here.
    return model, "untrained PaiNN (H,C,O; 64 features, 3 interactions, 5 A cutoff, float32)"


def raw_runner(model: Any, s: Structure) -> Runner:
    """n forward+backward evaluations of the model alone (no input checks, no unit conversion)."""
    import torch

    from mlsim.openmm._module import model_dtype

    dtype = model_dtype(model)
    n = torch.tensor(s.numbers)
    x = torch.tensor(s.positions, dtype=dtype)
    cell = torch.tensor(s.cell if s.cell is not None else np.zeros((3, 3)), dtype=dtype)[None]
    pbc = torch.tensor(s.pbc)[None]
    b = torch.zeros(len(s), dtype=torch.long)

    def run(steps: int) -> None:
        """Evaluate energy and forces `steps` times."""
        for _ in range(steps):
            pos = x.clone().requires_grad_(True)
            energy = model(n, pos, cell, pbc, b).sum()
            torch.autograd.grad([energy], [pos])

    return run


def openmm_runner(
    model: Any, s: Structure, backend: str, outputs_forces: bool, threads: int = 1
) -> Runner:
    """n VerletIntegrator steps (0.5 fs) on OpenMM's CPU platform."""
    from mlsim.openmm import create_system
    from mlsim.openmm._engine import make_context, set_positions, verlet_integrator

    system = create_system(model, s, backend=backend, outputs_forces=outputs_forces)
    ctx = make_context(system, verlet_integrator(0.5), "CPU", threads=threads)
    set_positions(ctx, s.positions, s.cell if s.periodic else None)

    def run(steps: int) -> None:
        """Advance `steps` MD steps."""
        ctx.getIntegrator().step(steps)  # the closure keeps the Context alive

    return run


def ase_runner(model: Any, s: Structure) -> Runner:
    """n VelocityVerlet steps (0.5 fs) with mlsim.ase.MLCalculator."""
    from ase import units as ase_units
    from ase.md.verlet import VelocityVerlet

    from mlsim.ase import MLCalculator

    atoms = s.to_atoms()
    atoms.calc = MLCalculator(model)
    dyn = VelocityVerlet(atoms, timestep=0.5 * ase_units.fs)
    return dyn.run


def measure(runners: dict[str, Runner], steps: int, rounds: int) -> dict[str, dict[str, float]]:
    """Best steps/s of each runner over interleaved rounds: {"cpu": ..., "wall": ...}.

    "cpu" divides by the process CPU time (everything runs on the benchmark's threads), which
    other jobs on a shared machine barely disturb; "wall" is what a user waits, and swings with
    the load.
    """
    best = {name: {"cpu": 0.0, "wall": 0.0} for name in runners}
    for run in runners.values():
        run(3)  # TorchScript profiling runs (2) and OpenMM set-up are not timed
    for _ in range(rounds):
        for name, run in runners.items():
            c0, t0 = time.process_time(), time.perf_counter()
            run(steps)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            best[name]["cpu"] = max(best[name]["cpu"], steps / max(cpu, 1e-9))
            best[name]["wall"] = max(best[name]["wall"], steps / wall)
    return best


RAW = "raw model (fwd+bwd)"


def run_engines(
    model_path: Path | None,
    systems: dict[str, int],
    rounds: int = 3,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Time the model raw, in OpenMM (TorchForce, PythonForce) and in ASE on each named system.

    `systems` maps a name in ENGINE_SYSTEMS to the steps per round (0 leaves it out).
    """
    from mlsim.models._graph import HAVE_NEIGHBOR_OP

    unknown = set(systems) - set(ENGINE_SYSTEMS)
    if unknown:
        raise ValueError(
            f"unknown MD-speed system(s) {sorted(unknown)}; known: {[*ENGINE_SYSTEMS]}"
        )
    model, model_desc = engine_model(model_path)
    out: dict[str, Any] = {
        "model": model_desc,
        "rounds": rounds,
        "threads": threads,
        "compiled_neighbor_op": HAVE_NEIGHBOR_OP,
        "systems": {},
    }
    for name, steps in systems.items():
        if steps <= 0:
            continue
        s = ENGINE_SYSTEMS[name]()
        if progress:
            print(f"  md: engines on {name} ({len(s)} atoms)", file=sys.stderr, flush=True)
        runners = {
            RAW: raw_runner(model, s),
            "OpenMM TorchForce (forces)": openmm_runner(model, s, "torch", True, threads),
            "OpenMM TorchForce (autograd)": openmm_runner(model, s, "torch", False, threads),
            "OpenMM PythonForce": openmm_runner(model, s, "python", True, threads),
            "ASE MLCalculator": ase_runner(model, s),
        }
        best = measure(runners, steps, rounds)
        raw = best[RAW]["cpu"]
        out["systems"][name] = {
            "atoms": len(s),
            "periodic": s.periodic,
            "steps_per_round": steps,
            "methods": {
                method: {
                    "steps_per_s_cpu": b["cpu"],
                    "steps_per_s_wall": b["wall"],
                    "ms_per_step_cpu": 1e3 / b["cpu"],
                    "overhead_vs_raw": raw / b["cpu"] - 1.0,
                }
                for method, b in best.items()
            },
        }
    out["fastest_openmm_backend"] = {
        name: max(
            (m for m in r["methods"] if m.startswith("OpenMM")),
            key=lambda m, r=r: r["methods"][m]["steps_per_s_cpu"],
        )
        for name, r in out["systems"].items()
    }
    return out


# --- both sections ------------------------------------------------------------------------------
@dataclass
class MDSpeedConfig:
    """What the MD-speed benchmark runs (defaults: the full run)."""

    model: Path | None = None  # the engines' model (the shipped ethanol model); None: untrained
    ml_alanine: Callable[[Any], Any] | None = None  # the alanine ML systems (suite._mlmd)
    threads: int = 1
    min_seconds: float = 5.0  # per alanine Langevin run
    rounds: int = 3
    systems: dict[str, int] = field(default_factory=lambda: {"ethanol": 200, "water_box": 5})
    alanine: bool = True
    engines: bool = True
    progress: bool = True


def _section(func: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section; a failure or skip is recorded there, so the other section still counts."""
    try:
        return {"status": "ok", **func()}
    except Skipped as exc:
        return {"status": "skipped", "reason": str(exc)}
    except ValueError:
        raise  # a bad option: the user's error to see
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}


def run_md_speed(cfg: MDSpeedConfig) -> dict[str, Any]:
    """Run the alanine (Amber14 vs mlsim in OpenMM) and engines (raw/OpenMM/ASE) sections."""
    import torch

    torch.set_num_threads(cfg.threads)
    out: dict[str, Any] = {}
    if cfg.alanine:
        out["alanine"] = _section(
            lambda: run_alanine(
                cfg.ml_alanine, cfg.threads, min_seconds=cfg.min_seconds, progress=cfg.progress
            )
        )
    else:
        out["alanine"] = {"status": "skipped", "reason": "not requested"}
    if cfg.engines:
        out["engines"] = _section(
            lambda: run_engines(cfg.model, cfg.systems, cfg.rounds, cfg.threads, cfg.progress)
        )
    else:
        out["engines"] = {"status": "skipped", "reason": "not requested"}
    return out
