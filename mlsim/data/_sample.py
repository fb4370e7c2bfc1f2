"""Configuration sampling: Langevin MD with any ASE calculator, or thinning an existing trajectory."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlsim.data._dataset import Dataset
from mlsim.data._structure import Structure

__all__ = ["sample", "sample_trajectory"]


def sample(
    start: Structure | Any,
    calculator: Any | Callable[[], Any],
    temperatures: Sequence[float],
    n_frames: int,
    *,
    every: int = 50,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.01,
    equilibration_fs: float = 1000.0,
    seed: int = 0,
    progress: bool = True,
) -> Dataset:
    """Run one Langevin trajectory per temperature and keep every `every`-th step after equilibration.

    `start` is a Structure or ase.Atoms; `calculator` an ASE calculator or a zero-argument factory
    (called once per trajectory). Each trajectory's random stream is seeded by (seed, temperature
    index), so runs are reproducible; frames record temperature_K, seed, trajectory and time_fs.
    Returns `n_frames` structures per temperature, in trajectory order, each with the energy and
    forces the MD calculator computed for it (info["method"] names it), so frames sampled with the
    reference method itself need no relabelling.
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    if n_frames < 1 or every < 1:
        raise ValueError("n_frames and every must be >= 1")
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ValueError(f"temperatures must be positive kelvin values, got {list(temperatures)}")
    if timestep_fs <= 0 or friction_per_fs <= 0:
        raise ValueError("timestep_fs and friction_per_fs must be positive")
    s0 = start if isinstance(start, Structure) else Structure.from_atoms(start)
    n_eq = int(round(equilibration_fs / timestep_fs))
    out: list[Structure] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(temperatures) * (n_eq + n_frames * every),
            desc="sample MD",
            unit="step",
            file=sys.stderr,
        )
    for k, temp in enumerate(temperatures):
        rng = np.random.default_rng([seed, k])
        atoms = s0.to_atoms()
        factory = isinstance(calculator, type) or not hasattr(calculator, "get_potential_energy")
        atoms.calc = calculator() if factory else calculator
        # FixCom + fixcm=False: ASE's fixcm=True Langevin samples a slightly wrong NVT ensemble,
        # which is noticeable for a 9-atom molecule.
        atoms.set_constraint(FixCom())
        thermalize_momenta(atoms, temp, rng=rng)
        Stationary(atoms)
        if not atoms.pbc.any():
            # ASE divides by each principal moment before discarding zero ones (linear molecules).
            with np.errstate(divide="ignore", invalid="ignore"):
                ZeroRotation(atoms)
        calc_name = str(
            getattr(atoms.calc, "parameters", {}).get("method") or type(atoms.calc).__name__
        )
        dyn = Langevin(
            atoms,
            timestep=timestep_fs * units.fs,
            temperature_K=temp,
            friction=friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )
        _run_steps(dyn, n_eq, bar)
        for f in range(n_frames):
            _run_steps(dyn, every, bar)
            # The last MD step computed energy and forces at these positions: keep them (the raw
            # calculator forces, not the FixCom-projected ones the integrator used).
            s = Structure(
                numbers=atoms.numbers.copy(),
                positions=atoms.positions.copy(),
                cell=s0.cell,
                pbc=s0.pbc,
                energy=float(atoms.get_potential_energy()),
                forces=np.array(atoms.get_forces(apply_constraint=False), dtype=float),
                info={
                    "temperature_K": float(temp),
                    "seed": int(seed),
                    "trajectory": f"T{temp:g}-seed{seed}",
                    "md_calculator": calc_name,
                    "method": calc_name,
                    "time_fs": round((n_eq + (f + 1) * every) * timestep_fs, 6),
                },
            )
            if not np.isfinite(s.positions).all():
                raise RuntimeError(f"MD at {temp} K exploded (non-finite positions) at frame {f}")
            out.append(s)
    if bar is not None:
        bar.close()
    return Dataset(out)


def _run_steps(dyn: Any, steps: int, bar: Any) -> None:
    """Run `steps` MD steps, advancing the progress bar after each (equilibration included)."""
    steps_run = dyn.irun(steps)
    next(steps_run)  # irun yields once before the first step
    for _ in steps_run:
        if bar is not None:
            bar.update(1)


def sample_trajectory(
    trajectory: str | Path | Sequence[Any],
    *,
    every: int = 1,
    start: int = 0,
    stop: int | None = None,
) -> Dataset:
    """Keep frames start, start+every, ... (< stop) of a trajectory file (any ASE/mlsim format) or sequence."""
    if every < 1 or start < 0:
        raise ValueError("every must be >= 1 and start >= 0")
    if isinstance(trajectory, (str, Path)):
        from mlsim.data._io import format_of, read

        path = Path(trajectory)
        if format_of(path) == "ase":
            from ase.io import read as ase_read

            if not path.exists():
                raise FileNotFoundError(f"trajectory {path} not found")
            frames: Sequence[Any] = ase_read(
                path, index=f"{start}:{'' if stop is None else stop}:{every}"
            )
            return Dataset([Structure.from_atoms(a) for a in frames])
        ds = read(path)
        return ds[start:stop:every]
    picked = list(trajectory)[start:stop:every]
    return Dataset([s if isinstance(s, Structure) else Structure.from_atoms(s) for s in picked])
