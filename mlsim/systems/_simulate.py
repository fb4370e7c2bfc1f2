"""Langevin MD with OpenMM: the trajectory generator for training data and reference runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsim._fileio import atomic_write, write_json

__all__ = ["Frames", "make_context", "simulate", "write_dcd"]


@dataclass
class Frames:
    """Saved MD frames: positions (T, n, 3) nm, velocities (T, n, 3) nm/ps or None, times (T,) ps."""

    positions_nm: np.ndarray
    velocities_nm_ps: np.ndarray | None
    times_ps: np.ndarray
    wall_s: float
    n_steps: int


def make_context(system, temperature: float, dt_fs: float, seed: int, platform: str = "CPU"):
    """Return an OpenMM Context with a LangevinMiddleIntegrator (friction 1/ps) on one thread."""
    import openmm
    from openmm import unit

    integ = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, 1.0 / unit.picosecond, dt_fs * unit.femtosecond
    )
    integ.setRandomNumberSeed(int(seed))
    plat = openmm.Platform.getPlatformByName(platform)
    props = {"Threads": "1"} if platform == "CPU" else {}
    return openmm.Context(system, integ, plat, props)


def write_dcd(path: str | os.PathLike, topology, positions_nm: np.ndarray, dt_ps: float) -> Path:
    """Write frames (T, n, 3) in nm, dt_ps apart, to a DCD file atomically (mlsim._fileio).

    The spacing goes into the DCD header (time step dt_ps, one frame per step) and into
    `<path>.json`, which mlsim analyze reads (mdtraj ignores DCD times).
    """
    from openmm import app, unit

    if not np.isfinite(dt_ps) or dt_ps <= 0:
        raise ValueError(f"dt_ps must be a positive frame spacing in ps, got {dt_ps}")
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        dcd = app.DCDFile(fh, topology, dt_ps * unit.picosecond, interval=1)
        for x in positions_nm:
            dcd.writeModel(x * unit.nanometer)
    write_json(
        path.with_name(path.name + ".json"),
        {
            "trajectory": path.name,
            "format": "dcd",
            "frame_interval_ps": float(dt_ps),
            "n_frames": len(positions_nm),
            "units": {path.name: "positions in Angstrom", "this file": "times in ps"},
        },
    )
    return path


def simulate(
    system,
    positions: np.ndarray,
    n_steps: int,
    report_interval: int,
    seed: int,
    temperature: float = 300.0,
    dt_fs: float = 2.0,
    platform: str = "CPU",
    equilibrate_steps: int = 0,
    progress: bool = False,
) -> Frames:
    """Run Langevin MD (velocities drawn at `temperature`) and return every report_interval-th frame.

    Constraints are whatever `system` carries (HBonds for 2 fs; use dt_fs <= 1 without them).
    """
    import time

    from openmm import unit

    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (system.getNumParticles(), 3):
        raise ValueError(
            f"positions shape {positions.shape} != ({system.getNumParticles()}, 3) atoms"
        )
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or inf")
    if n_steps <= 0 or report_interval <= 0 or n_steps % report_interval:
        raise ValueError("n_steps must be a positive multiple of report_interval")
    ctx = make_context(system, temperature, dt_fs, seed, platform)
    ctx.setPositions(positions * unit.nanometer)
    ctx.applyConstraints(1e-8)
    ctx.setVelocitiesToTemperature(temperature * unit.kelvin, int(seed))
    integ = ctx.getIntegrator()
    if equilibrate_steps:
        integ.step(int(equilibrate_steps))
    n_frames = n_steps // report_interval
    xs = np.empty((n_frames, positions.shape[0], 3))
    vs = np.empty_like(xs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_frames, desc=f"MD seed {seed}", unit="frame", leave=False)
    t0 = time.perf_counter()
    for i in range(n_frames):
        integ.step(report_interval)
        st = ctx.getState(getPositions=True, getVelocities=True)
        xs[i] = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        vs[i] = st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
        if bar is not None:
            bar.update(1)
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if not np.all(np.isfinite(xs)):
        raise RuntimeError("MD blew up (non-finite positions); reduce dt_fs or add constraints")
    times = (np.arange(1, n_frames + 1) * report_interval) * dt_fs / 1000.0
    return Frames(xs, vs, times, wall, int(n_steps))
