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
) -> Callable[[Any], tuple[MLSystems, dict[str, Any]]]:
    """Return a callable(molecular_system) -> ([(key, label, System)], info) for the MD-speed runs.

    With `model` given (an mlsim model.pt covering H, C, N, O) it is used as is; otherwise a small
    model is trained here on xTB-labelled alanine dipeptide frames (cached in work_dir).
    """

    def make(ms: Any) -> tuple[MLSystems, dict[str, Any]]:
        """Train (or take) the model and wrap it in OpenMM Systems."""
        if model is not None:
            if not Path(model).exists():
                raise Skipped(f"MD model {model} not found")
            path, info = Path(model), {"model": str(model), "trained_here": False}
        elif quick:
            raise Skipped("--quick does not train a model (give one with --md-model)")
        else:
            path, info = train_alanine_model(ms, work_dir, progress=progress)
        return ml_systems(ms, path), info

    return make


def _model_spec(elements: list[int]) -> dict[str, Any]:
    """Architecture of the shipped ethanol model when present (so MD cost is representative)."""
    shipped = Path("examples/ethanol/model.pt")
    spec: dict[str, Any] = {
        "architecture": "painn",
        "hyperparameters": {"features": 32, "num_interactions": 2, "cutoff": 5.0},
    }
    if shipped.exists():
        try:
            from mlsim.models import load_metadata

            meta_spec = load_metadata(shipped)["spec"]
            if meta_spec.get("architecture") in ("painn", "ani"):
                spec = {
                    k: v for k, v in meta_spec.items() if k in ("architecture", "hyperparameters")
                }
        except (ValueError, KeyError, RuntimeError):
            pass  # fall back to the small default
    return {**spec, "elements": elements}


def train_alanine_model(
    ms: Any,
    work_dir: Path,
    n_frames: int = 400,
    budget_s: float = 180.0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Train an mlsim model on xTB-labelled alanine dipeptide frames within budget_s; cached.

    Energy + force loss, AdamW with a cosine learning rate over the time budget, 10% held out for
    the force MAE reported next to the MD speed (it says how usable the MD model is, not how good
    mlsim can get: that is the training benchmark's job).
    """
    import time

    import torch
    from tqdm import tqdm

    try:
        from mlsim.data import read, write
        from mlsim.models import build_model, compute_properties, fit_self_energies, save_model
    except ImportError as exc:
        raise Skipped(f"mlsim.models / mlsim.data API not available: {exc}") from exc

    work_dir.mkdir(parents=True, exist_ok=True)
    model_path = work_dir / "alanine_xtb_model.pt"
    info_path = work_dir / "alanine_xtb_model.json"
    if model_path.exists() and info_path.exists():  # a finished earlier run: reuse, do not retrain
        import json

        return model_path, {**json.loads(info_path.read_text()), "reused": True}
    data_path = work_dir / "alanine_xtb_frames.extxyz"
    if data_path.exists():
        frames = list(read(data_path))
    else:
        frames = label_frames(sample_frames(ms, n_frames, seed=seed + 3), progress=progress)
        write(data_path, frames)  # atomic; an interrupted run keeps its labels
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frames))
    n_val = max(1, len(frames) // 10)
    val = [frames[i] for i in order[:n_val]]
    train = [frames[i] for i in order[n_val:]]
    elements = sorted({int(z) for s in frames for z in s.numbers})
    spec = _model_spec(elements)
    spec["self_energies"] = {int(k): v for k, v in fit_self_energies(train, elements).items()}
    torch.manual_seed(seed)
    model = build_model(spec)
    model.train()

    def batch(items: list[Structure]) -> tuple[Any, ...]:
        """Concatenate structures into mlsim's flat batch layout (float32 training)."""
        numbers = torch.as_tensor(np.concatenate([s.numbers for s in items]))
        pos = torch.as_tensor(np.concatenate([s.positions for s in items]), dtype=torch.float32)
        idx = torch.as_tensor(np.repeat(np.arange(len(items)), [len(s) for s in items]))
        cell = torch.zeros((len(items), 3, 3))
        pbc = torch.zeros((len(items), 3), dtype=torch.bool)
        e = torch.as_tensor([s.energy for s in items], dtype=torch.float32)
        f = torch.as_tensor(np.concatenate([s.forces for s in items]), dtype=torch.float32)
        return numbers, pos, cell, pbc, idx, e, f

    n_atoms = len(frames[0])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-6)
    start, step, bs = time.perf_counter(), 0, 16
    bar = tqdm(desc="train alanine model", file=sys.stderr, disable=not progress, unit="step")
    while (elapsed := time.perf_counter() - start) < budget_s:
        for g in opt.param_groups:  # cosine decay over the wall-clock budget
            g["lr"] = 1e-5 + 0.5 * (2e-3 - 1e-5) * (1 + np.cos(np.pi * elapsed / budget_s))
        picks = rng.choice(len(train), size=min(bs, len(train)), replace=False)
        numbers, pos, cell, pbc, idx, e, f = batch([train[i] for i in picks])
        out = compute_properties(
            model, numbers, pos, cell, pbc, idx, forces=True, create_graph=True
        )
        loss = ((out["energy"] - e) / n_atoms).pow(2).mean() + (out["forces"] - f).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    model.eval()
    numbers, pos, cell, pbc, idx, e, f = batch(val)
    out = compute_properties(model, numbers, pos, cell, pbc, idx, forces=True)
    val_mae = float((out["forces"].detach() - f).abs().mean())
    save_model(model, model_path, spec)
    info = {
        "model": str(model_path),
        "trained_here": True,
        "architecture": spec["architecture"],
        "hyperparameters": spec.get("hyperparameters", {}),
        "reference": "GFN2-xTB (tblite)",
        "n_train": len(train),
        "n_val": len(val),
        "steps": step,
        "train_seconds": time.perf_counter() - start,
        "val_force_mae_ev_per_a": val_mae,
    }
    from mlsim.bench._runner import write_json

    write_json(info_path, info)
    return model_path, info
