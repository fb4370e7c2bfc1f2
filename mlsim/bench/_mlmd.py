"""The ML side of the MD-speed benchmark: sample alanine dipeptide, label with xTB, train, deploy.

The model must cost what a production mlsim potential costs on this molecule, and it is trained on
real GFN2-xTB labels so the trajectory it drives stays physical (an untrained network can blow up
inside the timing window). It runs through mlsim.openmm, the path users deploy with: openmm-torch
TorchForce and openmm.PythonForce, both timed.
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

__all__ = ["label_frames", "ml_alanine_factory", "ml_systems", "sample_frames"]

MLSystems = list[tuple[str, str, Any]]  # (key, label, openmm.System)


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


def ml_systems(ms: Any, model_path: Path) -> MLSystems:
    """Build the alanine dipeptide System once per mlsim.openmm backend, with only the ML force."""
    import openmm

    try:
        from mlsim.openmm import BACKENDS, create_force
    except ImportError as exc:
        raise Skipped(f"mlsim.openmm (TorchForce/PythonForce export) not available: {exc}") from exc
    numbers = [a.element.atomic_number for a in ms.topology.atoms()]
    labels = {"torch": "TorchForce (openmm-torch)", "python": "PythonForce"}
    out: MLSystems = []
    for backend in BACKENDS:
        system = openmm.System()
        for i in range(ms.system.getNumParticles()):  # same masses as the Amber14 system
            system.addParticle(ms.system.getParticleMass(i))
        system.addForce(create_force(model_path, numbers, backend=backend))
        name = labels.get(backend, backend)
        out.append((f"mlsim_{backend}", f"mlsim {model_path.name} via {name}, 1 fs", system))
    return out


def ml_alanine_factory(
    quick: bool, work_dir: Path, model: Path | None = None, progress: bool = True
) -> Callable[[Any], MLSystems]:
    """Return a callable(molecular_system) -> [(key, label, System)] for the MD-speed runs.

    With `model` given (an mlsim model.pt covering H, C, N, O) it is used as is; otherwise a small
    model is trained here on xTB-labelled alanine dipeptide frames.
    """

    def make(ms: Any) -> MLSystems:
        """Train (or take) the model and wrap it in OpenMM Systems."""
        path = model
        if path is None:
            if quick:
                raise Skipped("--quick does not train a model (give one with --md-model)")
            path = _train_alanine_model(ms, work_dir, progress)
        if not Path(path).exists():
            raise Skipped(f"MD model {path} not found")
        return ml_systems(ms, Path(path))

    return make


def _train_alanine_model(ms: Any, work_dir: Path, progress: bool) -> Path:
    """Train a small mlsim model on xTB-labelled alanine dipeptide frames; return model.pt."""
    try:
        import mlsim.train  # noqa: F401
    except ImportError as exc:
        raise Skipped(f"mlsim training API (mlsim.train) not available yet: {exc}") from exc
    raise Skipped("mlsim.train hookup pending")
