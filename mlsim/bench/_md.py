"""OpenMM MD speed: alanine dipeptide with Amber14 vs the same molecule on an mlsim TorchForce."""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from mlsim.bench._methods import Skipped

__all__ = ["md_speed", "run_openmm_md"]


def md_speed(
    system: Any,
    positions_nm: Any,
    dt_fs: float,
    threads: int = 1,
    platform: str = "CPU",
    min_seconds: float = 3.0,
    warmup_steps: int = 20,
    max_steps: int = 1_000_000,
    temperature_k: float = 300.0,
) -> dict[str, Any]:
    """Run Langevin MD and return steps/s and ns/day, timing whole step() calls after a warm-up."""
    import openmm
    from openmm import unit

    integrator = openmm.LangevinMiddleIntegrator(
        temperature_k * unit.kelvin, 1.0 / unit.picosecond, dt_fs * unit.femtoseconds
    )
    integrator.setRandomNumberSeed(1)
    plat = openmm.Platform.getPlatformByName(platform)
    props = {"Threads": str(threads)} if platform == "CPU" else {}
    context = openmm.Context(system, integrator, plat, props)
    context.setPositions(positions_nm)
    context.setVelocitiesToTemperature(temperature_k * unit.kelvin, 1)
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
    epot = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    ekin = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not math.isfinite(epot):
        raise RuntimeError(f"MD blew up: potential energy {epot} after {steps} steps")
    # Instantaneous temperature: a sanity check that the timed trajectory stayed physical.
    dof = 3 * system.getNumParticles() - system.getNumConstraints()
    if any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces()):
        dof -= 3
    r_gas = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    temp = 2.0 * ekin / (dof * r_gas)
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
    """Return mlsim.systems.alanine_dipeptide in vacuum, or raise Skipped if it is not there yet."""
    try:
        from mlsim.systems import alanine_dipeptide
    except ImportError as exc:
        raise Skipped(f"mlsim.systems.alanine_dipeptide not available: {exc}") from exc
    return alanine_dipeptide(solvent="vacuum", constraints=constraints)


def run_openmm_md(
    ml_system_factory: Callable[[Any], tuple[list[tuple[str, str, Any]], dict[str, Any]]] | None,
    threads: int = 1,
    min_seconds: float = 3.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Time Amber14 (flexible, 1 fs and HBonds, 2 fs) and the mlsim TorchForce system side by side.

    ml_system_factory(molecular_system) returns ([(key, label, openmm.System with the ML force)],
    info about the model) or raises Skipped; the ML runs use the same integrator, time step and platform as the flexible
    Amber run, so steps/s compare like for like.
    """
    runs: dict[str, Any] = {}
    ml_info: dict[str, Any] = {}
    flexible = _alanine(None)
    n_atoms = flexible.n_atoms

    def log(msg: str) -> None:
        """Progress line on stderr."""
        if progress:
            print(f"  md: {msg}", file=sys.stderr, flush=True)

    log("amber14, flexible bonds, 1 fs")
    runs["amber14_flexible"] = {
        "label": "Amber14 (vacuum, flexible, 1 fs)",
        "status": "ok",
        **md_speed(flexible.system, flexible.positions_nm, 1.0, threads, min_seconds=min_seconds),
    }
    log("amber14, HBonds constraints, 2 fs")
    hb = _alanine("HBonds")
    runs["amber14_hbonds"] = {
        "label": "Amber14 (vacuum, HBonds, 2 fs)",
        "status": "ok",
        **md_speed(hb.system, hb.positions_nm, 2.0, threads, min_seconds=min_seconds),
    }
    if ml_system_factory is None:
        runs["mlsim"] = {"status": "skipped", "reason": "not requested"}
    else:
        try:
            ml_runs, ml_info = ml_system_factory(flexible)
            for key, label, ml_system in ml_runs:
                log(label)
                try:
                    res = md_speed(
                        ml_system, flexible.positions_nm, 1.0, threads, min_seconds=min_seconds
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
        "n_atoms": n_atoms,
        "runs": runs,
        "ml_model": ml_info,
    }
