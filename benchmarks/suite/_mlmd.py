"""The ML side of the MD-speed benchmark: sample alanine dipeptide, label with xTB, train, deploy.

The model must cost what a production mlsim potential costs on this molecule, and it is trained on
real GFN2-xTB labels so the trajectory it drives stays physical (an untrained network can blow up
inside the timing window). It runs through mlsim.openmm, the path users deploy with: openmm-torch
TorchForce and openmm.PythonForce, both timed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlsim.data import Structure
from suite._methods import CHARGE, SPIN, Skipped
from suite._paths import shown

__all__ = ["ml_alanine_factory", "ml_systems", "sample_frames", "train_alanine_model"]

MLSystems = list[tuple[str, str, Any]]  # (key, label, openmm.System)
XTB_FRAMES = "alanine_xtb_labels.extxyz"  # in the work folder; the cost part times these frames


def sample_frames(
    ms: Any, n_frames: int, stride: int = 50, temperature_k: float = 500.0, seed: int = 3
) -> list[Structure]:
    """Sample n_frames geometries from Amber14 Langevin MD (hot, for diverse training data)."""
    from mlsim.openmm._engine import (
        langevin_integrator,
        make_context,
        positions_of,
        set_positions,
        set_velocities,
    )

    integ = langevin_integrator(1.0, temperature_k, 1.0, seed)
    ctx = make_context(ms.system, integ, "Reference")
    set_positions(ctx, ms.positions)
    set_velocities(ctx, temperature_k, seed)
    numbers = np.array([a.element.atomic_number for a in ms.topology.atoms()])
    frames = []
    for _ in range(n_frames):
        integ.step(stride)
        x = positions_of(ctx.getState(getPositions=True))
        frames.append(Structure(numbers=numbers, positions=x))
    return frames


def ml_systems(ms: Any, model_path: Path, name: str | None = None) -> MLSystems:
    """Build the alanine dipeptide System once per mlsim.openmm backend, with only the ML force."""
    import openmm

    try:
        from mlsim.openmm import create_force
        from mlsim.openmm._forces import BACKENDS
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
        what = name or f"mlsim {model_path.name}"
        out.append((f"mlsim_{backend}", f"{what} via {labels.get(backend, backend)}, 1 fs", system))
    return out


def ml_alanine_factory(
    quick: bool,
    work_dir: Path,
    model: Path | None = None,
    progress: bool = True,
    architecture_of: Path | None = None,
) -> Callable[[Any], tuple[MLSystems, dict[str, Any]]]:
    """Return a callable(molecular_system) -> ([(key, label, System)], info) for the MD-speed runs.

    With `model` given (an mlsim model.pt covering H, C, N, O) it is used as is; otherwise a small
    model is trained here on xTB-labelled alanine dipeptide frames (cached in work_dir), with the
    architecture of the model file `architecture_of` (the shipped ethanol model) when it exists.
    """

    def make(ms: Any) -> tuple[MLSystems, dict[str, Any]]:
        """Train (or take) the model and wrap it in OpenMM Systems."""
        if model is not None:
            if not Path(model).exists():
                raise Skipped(f"MD model {model} not found")
            path, info = Path(model), {"model": shown(model), "trained_here": False}
        elif quick:
            raise Skipped("--quick does not train a model (give one with --md-model)")
        else:
            path, info = train_alanine_model(
                ms, work_dir, progress=progress, architecture_of=architecture_of
            )
        name = f"mlsim {info['architecture']} (xTB-trained)" if info.get("trained_here") else None
        return ml_systems(ms, path, name), info

    return make


def _model_spec(shipped: Path | None) -> dict[str, Any]:
    """Architecture of the shipped ethanol model when present (so MD cost is representative)."""
    spec: dict[str, Any] = {
        "architecture": "painn",
        "hyperparameters": {"features": 32, "num_interactions": 2, "num_rbf": 16, "cutoff": 5.0},
    }
    if shipped is not None and shipped.exists():
        try:
            from mlsim.models import load_metadata

            meta = load_metadata(shipped)["spec"]
            if meta.get("architecture", "ensemble") != "ensemble":
                hp = dict(meta.get("hyperparameters") or {})
                hp.pop("energy_scale", None)  # refitted to the alanine data by mlsim.train
                spec = {"architecture": meta["architecture"], "hyperparameters": hp}
        except (ValueError, KeyError, RuntimeError):
            pass  # fall back to the small default
    return spec


def train_alanine_model(
    ms: Any,
    work_dir: Path,
    n_frames: int = 400,
    budget_min: float = 3.0,
    seed: int = 0,
    progress: bool = True,
    architecture_of: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train an mlsim model (mlsim.train) on xTB-labelled alanine dipeptide frames; cached.

    The held-out force MAE goes next to the MD speed: it says whether the MD model is usable, not
    how good mlsim can get (that is the training benchmark's job). A finished run is reused.
    """
    import json

    try:
        from mlsim.data import label, read
        from mlsim.train import TrainConfig, train
    except ImportError as exc:
        raise Skipped(f"mlsim training API (mlsim.train) not available: {exc}") from exc

    work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = work_dir / "alanine_model"
    model_path = run_dir / "model.pt"
    summary_path = run_dir / "summary.json"
    data_path = work_dir / XTB_FRAMES
    if not (model_path.exists() and summary_path.exists() and data_path.exists()):
        # mlsim's own labelling (GFN2-xTB, explicit charge and spin): resumable, so an
        # interrupted run keeps its labels; a complete file is left as it is.
        frames = sample_frames(ms, n_frames, seed=seed + 3)
        label(frames, data_path, "xtb", charge=CHARGE, spin=SPIN, progress=progress)
    n = len(read(data_path))
    spec = _model_spec(architecture_of)
    if not (model_path.exists() and summary_path.exists()):
        cfg = TrainConfig(
            data=str(data_path.resolve()),
            output=str(run_dir.resolve()),
            seed=seed,
            model=spec,
            schedule="plateau",  # the shipped ethanol recipe (examples/ethanol/train.yaml)
            lr=3e-3,
            forces_weight=50.0,
            batch_size=16,
            epochs=10_000,  # the time budget ends training
            time_budget_min=budget_min,
            plots=False,
        )
        # An interrupted earlier run continues from its checkpoint (mlsim.train --resume); one
        # that cannot (different data or spec) starts over.
        resume = (run_dir / "checkpoint.pt").exists()
        try:
            summary = train(cfg, resume=resume, progress=progress)
        except ValueError:
            if not resume:
                raise
            import shutil

            shutil.rmtree(run_dir)
            summary = train(cfg, resume=False, progress=progress)
        reused = False
    else:
        summary, reused = json.loads(summary_path.read_text()), True
    info = {
        "model": shown(model_path),
        "trained_here": True,
        "reused": reused,
        "architecture": spec["architecture"],
        "hyperparameters": spec.get("hyperparameters", {}),
        "reference": "GFN2-xTB (tblite)",
        "n_frames": n,
        "n_train": summary.get("n_train"),
        "n_val": summary.get("n_val"),
        "epochs": summary.get("epochs"),
        "train_seconds": summary.get("train_time_s"),
        "val_force_mae_ev_per_a": (summary.get("val") or {}).get(
            "force_mae_meV_per_A", float("nan")
        )
        / 1000.0,
    }
    return model_path, info
