"""OpenMM MD with an mlsim model: Langevin (or NVE), reporters, checkpoints and blow-up detection.

The loop advances in chunks of `report_interval` steps and inspects every chunk's end state
*before* it is reported, so a blown-up frame (NaN or huge forces) never reaches the trajectory:
the simulation stops, the last good state is written (XML + checkpoint) and the error says where.
Checkpoints are OpenMM's own (positions, velocities, step count, RNG state) written atomically,
so a run can be interrupted at any time and resumed with nothing lost.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsim import units
from mlsim._fileio import write_bytes, write_text
from mlsim.data import Structure
from mlsim.openmm._forces import DEFAULT_BACKEND
from mlsim.openmm._system import create_system, topology_from_structure

__all__ = ["MDResult", "SimulationBlowUp", "run_md"]

# A force above this (eV/A) on any atom means the model left its training domain for good:
# chemical forces stay below ~20 eV/A even for strained geometries.
DEFAULT_MAX_FORCE = 100.0


class SimulationBlowUp(RuntimeError):
    """The simulation produced NaN energies/positions or forces above the blow-up threshold."""


@dataclass
class MDResult:
    """What an MD run produced: files and speed."""

    steps: int
    time_ps: float
    steps_per_second: float
    trajectory: Path
    log: Path
    checkpoint: Path
    final_state: Path


def _write_atomic(path: Path, data: bytes | str) -> None:
    """Write bytes or text atomically (mlsim._fileio)."""
    if isinstance(data, bytes):
        write_bytes(path, data)
    else:
        write_text(path, data)


def _problem(state: Any, max_force_kj: float) -> str | None:
    """Describe what is wrong with a state (NaN, huge force), or None if it looks physical."""
    energy = state.getPotentialEnergy()._value
    if not np.isfinite(energy):
        return f"potential energy is {energy}"
    pos = np.asarray(state.getPositions(asNumpy=True)._value)
    if not np.isfinite(pos).all():
        return "positions became NaN"
    forces = np.asarray(state.getForces(asNumpy=True)._value)
    if not np.isfinite(forces).all():
        return "forces became NaN"
    fmax = np.sqrt((forces**2).sum(1))
    worst = int(fmax.argmax())
    if fmax[worst] > max_force_kj:
        f_ev = float(units.forces_from_openmm(fmax[worst]))
        return f"force on atom {worst} is {f_ev:.1f} eV/A (threshold {units.forces_from_openmm(max_force_kj):.0f})"
    return None


def run_md(
    model: torch.nn.Module | str | os.PathLike,
    structure: Structure,
    out_dir: str | os.PathLike,
    steps: int,
    timestep_fs: float = 0.5,
    temperature_k: float = 300.0,
    friction_per_ps: float = 1.0,
    ensemble: str = "nvt",
    backend: str = DEFAULT_BACKEND,
    platform: str = "CPU",
    report_interval: int = 100,
    checkpoint_interval: int = 1000,
    trajectory: str = "trajectory.dcd",
    max_force: float = DEFAULT_MAX_FORCE,
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> MDResult:
    """Run `steps` MD steps of `structure` with the model; files go to out_dir.

    ensemble "nvt": LangevinMiddleIntegrator(temperature, friction); "nve": VerletIntegrator.
    Writes trajectory (.dcd or .xtc), state.csv (energies, temperature, speed), topology.pdb,
    checkpoint.chk and final_state.xml. With resume, continues from checkpoint.chk up to `steps`
    total steps. Raises SimulationBlowUp (after saving the last good state) on NaN or huge forces.
    """
    import openmm
    from openmm import app, unit
    from tqdm import tqdm

    if steps < 0 or report_interval <= 0 or checkpoint_interval <= 0:
        raise ValueError("steps must be >= 0 and the intervals > 0")
    if timestep_fs <= 0 or timestep_fs > 5:
        raise ValueError(f"timestep {timestep_fs} fs is outside (0, 5] fs")
    if ensemble not in ("nvt", "nve"):
        raise ValueError(f"ensemble must be 'nvt' or 'nve', got {ensemble!r}")
    suffix = Path(trajectory).suffix.lower()
    if suffix not in (".dcd", ".xtc"):
        raise ValueError(f"trajectory must end in .dcd or .xtc, got {trajectory!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    traj_path, log_path = out / trajectory, out / "state.csv"
    chk_path, final_path, bad_path = (
        out / "checkpoint.chk",
        out / "final_state.xml",
        out / "last_good_state.xml",
    )
    if resume and not chk_path.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {chk_path}")
    if not resume and traj_path.exists():
        raise ValueError(
            f"{traj_path} exists; pass resume to continue that run or choose another folder"
        )

    topology = topology_from_structure(structure)
    system = create_system(model, structure, backend=backend)
    dt = units.time_to_openmm(timestep_fs) * unit.picosecond
    if ensemble == "nvt":
        integrator = openmm.LangevinMiddleIntegrator(
            temperature_k * unit.kelvin, friction_per_ps / unit.picosecond, dt
        )
        if seed is not None:
            integrator.setRandomNumberSeed(seed)
    else:
        integrator = openmm.VerletIntegrator(dt)
    try:
        plat = openmm.Platform.getPlatformByName(platform)
    except openmm.OpenMMException as exc:
        raise ValueError(f"OpenMM platform {platform!r} is not available") from exc
    sim = app.Simulation(topology, system, integrator, plat)
    periodic = structure.periodic
    if resume:
        sim.context.loadCheckpoint(chk_path.read_bytes())
    else:
        sim.context.setPositions(units.positions_to_openmm(structure.positions))
        sim.context.setVelocitiesToTemperature(
            temperature_k * unit.kelvin, *([seed] if seed is not None else [])
        )
        with open(out / "topology.pdb", "w") as fh:
            app.PDBFile.writeFile(
                topology, units.positions_to_openmm(structure.positions) * unit.nanometer, fh
            )
    done = sim.currentStep
    if done > steps:
        raise ValueError(f"the checkpoint is already at step {done}, beyond the requested {steps}")

    append = resume and traj_path.exists()
    traj_cls = app.DCDReporter if suffix == ".dcd" else app.XTCReporter
    reporters = [
        traj_cls(str(traj_path), report_interval, append=append),
        app.StateDataReporter(
            str(log_path),
            report_interval,
            step=True,
            time=True,
            potentialEnergy=True,
            kineticEnergy=True,
            totalEnergy=True,
            temperature=True,
            speed=True,
            append=resume and log_path.exists(),
        ),
    ]
    max_force_kj = float(units.forces_to_openmm(max_force))

    def snapshot() -> Any:
        return sim.context.getState(
            getPositions=True,
            getVelocities=True,
            getEnergy=True,
            getForces=True,
            getParameters=True,
            enforcePeriodicBox=periodic,
        )

    good = snapshot()
    problem = _problem(good, max_force_kj)
    if problem:
        raise SimulationBlowUp(
            f"the starting structure is already unphysical for this model: {problem}"
        )
    good_checkpoint = sim.context.createCheckpoint()
    last_checkpoint_step = done
    t0, start_step = time.perf_counter(), done
    bar = tqdm(
        total=steps, initial=done, desc="MD", unit="step", file=sys.stderr, disable=not progress
    )
    try:
        while sim.currentStep < steps:
            n = min(report_interval - sim.currentStep % report_interval, steps - sim.currentStep)
            sim.step(n)
            state = snapshot()
            problem = _problem(state, max_force_kj)
            if problem:
                sim.context.loadCheckpoint(good_checkpoint)
                _write_atomic(chk_path, good_checkpoint)
                _write_atomic(bad_path, openmm.XmlSerializer.serialize(good))
                raise SimulationBlowUp(
                    f"simulation blew up between steps {good.getStepCount()} and {sim.currentStep}: "
                    f"{problem}. The last good state (step {good.getStepCount()}) is in {bad_path} "
                    f"and {chk_path}; try a smaller timestep or check the model's training domain."
                )
            good = state
            good_checkpoint = sim.context.createCheckpoint()
            if sim.currentStep % report_interval == 0:
                for r in reporters:
                    r.report(sim, state)
            if (
                sim.currentStep - last_checkpoint_step >= checkpoint_interval
                or sim.currentStep == steps
            ):
                _write_atomic(chk_path, good_checkpoint)
                last_checkpoint_step = sim.currentStep
            bar.update(n)
    finally:
        bar.close()
        for r in reporters:
            # The reporters keep their files open; close them so the data reaches disk.
            fh = getattr(r, "_out", None)
            if hasattr(fh, "close"):
                fh.close()
    elapsed = time.perf_counter() - t0
    _write_atomic(final_path, openmm.XmlSerializer.serialize(good))
    n_run = sim.currentStep - start_step
    return MDResult(
        steps=sim.currentStep,
        time_ps=float(sim.currentStep * units.time_to_openmm(timestep_fs)),
        steps_per_second=n_run / elapsed if elapsed > 0 else float("nan"),
        trajectory=traj_path,
        log=log_path,
        checkpoint=chk_path,
        final_state=final_path,
    )
