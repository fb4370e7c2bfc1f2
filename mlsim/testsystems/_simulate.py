"""Langevin MD with OpenMM: the trajectory generator for training data and reference runs.

Positions go in and come out in Angstrom (velocities in Angstrom/fs, times in fs); OpenMM's
objects and its nm/ps come from the MD engine layer (mlsim.openmm._engine). :func:`simulate` is the older nm interface,
kept for scripts written against it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlsim._fileio import atomic_write, write_json
from mlsim.units import FS_PER_PS, positions_from_openmm, positions_to_openmm

__all__ = ["Frames", "run_langevin", "simulate", "write_dcd"]


@dataclass
class Frames:
    """Saved MD frames: positions (T, n, 3) Angstrom, velocities (T, n, 3) Angstrom/fs, times fs."""

    positions: np.ndarray
    velocities: np.ndarray | None
    times_fs: np.ndarray
    wall_s: float
    n_steps: int

    @property
    def positions_nm(self) -> np.ndarray:
        """Positions in nm (OpenMM's unit)."""
        return positions_to_openmm(self.positions)

    @property
    def velocities_nm_ps(self) -> np.ndarray | None:
        """Velocities in nm/ps (OpenMM's unit)."""
        if self.velocities is None:
            return None
        return positions_to_openmm(self.velocities) * FS_PER_PS

    @property
    def times_ps(self) -> np.ndarray:
        """Frame times in ps."""
        return np.asarray(self.times_fs) / FS_PER_PS


def write_dcd(path: str | os.PathLike, topology, positions_nm: np.ndarray, dt_ps: float) -> Path:
    """Write frames (T, n, 3) in nm, dt_ps apart, to a DCD file atomically (mlsim._fileio).

    This is a writer at the OpenMM boundary (OpenMM's DCDFile takes nm): convert Angstrom
    positions with mlsim.units.positions_to_openmm first. The spacing goes into the DCD header
    (time step dt_ps, one frame per step) and into `<path>.json`, which mlsim analyze reads
    (mdtraj ignores DCD times).
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


def run_langevin(
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
    """Run Langevin MD from positions (n, 3) in Angstrom; return every report_interval-th frame.

    Velocities are drawn at `temperature`. Constraints are whatever `system` carries (HBonds for
    2 fs; use dt_fs <= 1 without them).
    """
    import time

    from mlsim.openmm._engine import (
        langevin_integrator,
        make_context,
        positions_of,
        set_positions,
        set_velocities,
        velocities_of,
    )

    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (system.getNumParticles(), 3):
        raise ValueError(
            f"positions shape {positions.shape} != ({system.getNumParticles()}, 3) atoms"
        )
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or inf")
    if n_steps <= 0 or report_interval <= 0 or n_steps % report_interval:
        raise ValueError("n_steps must be a positive multiple of report_interval")
    # Friction 1/ps on one CPU thread: a given seed gives the same frames on every machine.
    integ = langevin_integrator(dt_fs, temperature, 1.0, seed)
    ctx = make_context(system, integ, platform, threads=1)
    set_positions(ctx, positions)
    ctx.applyConstraints(1e-8)
    set_velocities(ctx, temperature, seed)
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
        xs[i] = positions_of(st)
        vs[i] = velocities_of(st)
        if bar is not None:
            bar.update(1)
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if not np.all(np.isfinite(xs)):
        raise RuntimeError("MD blew up (non-finite positions); reduce dt_fs or add constraints")
    times = np.arange(1, n_frames + 1) * report_interval * float(dt_fs)
    return Frames(xs, vs, times, wall, int(n_steps))


def simulate(system, positions: np.ndarray, *args: Any, **kwargs: Any) -> Frames:
    """:func:`run_langevin` with positions in nm (OpenMM's unit), the older interface.

    The other arguments are run_langevin's (n_steps, report_interval, seed, temperature, dt_fs,
    platform, equilibrate_steps, progress). Returns the same Frames (read ``positions_nm`` /
    ``times_ps`` or the Angstrom/fs fields).
    """
    return run_langevin(system, positions_from_openmm(positions), *args, **kwargs)
