"""The ML side of the MD-speed benchmark: sample alanine dipeptide, label with xTB, train, export.

The model only has to be a faithful *cost* stand-in for a production mlsim potential on this
molecule, but it is trained on real GFN2-xTB labels so the trajectory it drives is physical (an
untrained network can blow up within the timing window and would then time nothing useful).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlsim import units
from mlsim.bench._methods import Skipped, xtb_method
from mlsim.data import Structure

__all__ = ["label_frames", "ml_alanine_factory", "sample_frames"]


def sample_frames(
    ms: Any, n_frames: int, stride: int = 50, temperature_k: float = 500.0, seed: int = 3
) -> list[Structure]:
    """Sample n_frames geometries from Amber14 Langevin MD (hot, for diverse training data)."""
    import openmm
    from openmm import unit

    integ = openmm.LangevinMiddleIntegrator(
        temperature_k * unit.kelvin, 1.0 / unit.picosecond, 1.0 * unit.femtoseconds
    )
    integ.setRandomNumberSeed(seed)
    ctx = openmm.Context(ms.system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(ms.positions_nm)
    ctx.setVelocitiesToTemperature(temperature_k * unit.kelvin, seed)
    numbers = np.array([a.element.atomic_number for a in ms.topology.atoms()])
    frames = []
    for _ in range(n_frames):
        integ.step(stride)
        x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        frames.append(Structure(numbers=numbers, positions=units.positions_from_openmm(x)))
    return frames


def label_frames(frames: list[Structure], progress: bool = True) -> list[Structure]:
    """Attach GFN2-xTB energies (eV) and forces (eV/A) to the frames."""
    from tqdm import tqdm

    xtb = xtb_method()
    for s in tqdm(frames, desc="xTB labels (alanine)", file=sys.stderr, disable=not progress):
        s.energy, s.forces = xtb.evaluate(s)
    return frames


def ml_alanine_factory(
    quick: bool, work_dir: Path, progress: bool = True
) -> Callable[[Any], tuple[Any, str]]:
    """Return a callable(molecular_system) -> (OpenMM System on an mlsim TorchForce, label)."""

    def make(ms: Any) -> tuple[Any, str]:
        """Train a small mlsim model on xTB-labelled frames and put it into an OpenMM System."""
        try:
            from mlsim.models import train_model  # type: ignore[attr-defined]
        except ImportError as exc:
            raise Skipped(f"mlsim training API not available yet ({exc})") from exc
        try:
            from mlsim.openmm import create_system  # type: ignore[attr-defined]
        except ImportError as exc:
            raise Skipped(f"mlsim.openmm TorchForce export not available yet ({exc})") from exc
        raise Skipped("training hookup pending", train_model, create_system)

    return make
