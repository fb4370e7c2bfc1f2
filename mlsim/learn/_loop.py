"""The active-learning loop: explore -> select -> label -> retrain, resumable at every step.

All state lives in the output folder: state.json (written atomically after every iteration) and
one folder per iteration whose files mark which steps are done. A killed run restarted with
`resume=True` redoes at most the step it was in: exploration is deterministic (seeded) and
rewritten whole, labelling continues in its own resumable file (nothing labelled twice), and
training continues from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mlsim._fileio import atomic_path, write_json
from mlsim.data import Dataset, Structure, read, write
from mlsim.learn._config import RESUMABLE_CHANGES, LearnConfig
from mlsim.learn._initial import read_starts
from mlsim.learn._reference import check_reference, labeller_options

__all__ = ["learn"]

_FORMAT = "mlsim-learn/1"


def _log(msg: str) -> None:
    print(f"mlsim learn: {msg}", file=sys.stderr, flush=True)


def _read_or_empty(path: Path) -> list[Structure]:
    return list(read(path)) if path.is_file() and path.stat().st_size else []


def _config_dict(cfg: LearnConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d.pop("base_dir")
    return d


def _load_state(cfg: LearnConfig, out: Path, resume: bool) -> dict[str, Any]:
    state_path = out / "state.json"
    if not resume:
        if state_path.exists():
            raise ValueError(f"{state_path} exists; pass --resume to continue that run")
        return {
            "format": _FORMAT,
            "config": _config_dict(cfg),
            "iteration": 0,
            "n_labels": 0,
            "status": "running",
            "history": [],
        }
    if not state_path.is_file():
        raise FileNotFoundError(f"--resume: no run to resume at {state_path}")
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{state_path} is corrupt: {exc}") from exc
    if state.get("format") != _FORMAT:
        raise ValueError(f"{state_path} was not written by mlsim learn")
    new = _config_dict(cfg)
    changed = sorted(
        k for k in new if k not in RESUMABLE_CHANGES and state["config"].get(k) != new[k]
    )
    if changed:
        diffs = "; ".join(f"{k}: {state['config'].get(k)!r} -> {new[k]!r}" for k in changed)
        raise ValueError(f"--resume with a changed config ({diffs}); start a new output folder")
    state["config"] = new
    if state["status"] != "running":
        state["status"] = "running"  # a raised budget or iteration cap continues a finished run
    return state


def _structures_path(cfg: LearnConfig, out: Path) -> Path:
    """The starting-structure file; a `smiles:` start is embedded once into OUTPUT/start.sdf."""
    from mlsim.learn._initial import embed_smiles, smiles_of

    smiles = smiles_of(cfg.structures)
    if smiles is None:
        return cfg.path(cfg.structures)
    return embed_smiles(smiles, out / "start.sdf", cfg.seed)


def _train(
    cfg: LearnConfig, data: list[Structure], folder: Path, init_model: Path | None, progress: bool
) -> Path:
    """Train (or finish training) a committee on `data` in folder/train; returns its model.pt."""
    from mlsim.train import load_config, train
    from mlsim.train._config import TrainConfig

    model_path = folder / "train" / "model.pt"
    if model_path.is_file():
        return model_path
    data_path = folder / "train_data.extxyz"
    write(data_path, data)
    overrides: dict[str, Any] = {
        "data": str(data_path.resolve()),
        "output": str((folder / "train").resolve()),
        "time_budget_min": cfg.train_time_min,
    }
    if cfg.test_data:
        overrides["test_data"] = str(cfg.path(cfg.test_data).resolve())
    if init_model is not None and "init_model" in {f.name for f in dataclasses.fields(TrainConfig)}:
        overrides["init_model"] = str(init_model.resolve())
    tcfg = load_config(cfg.path(cfg.train), overrides)
    if tcfg.ensemble < 2:
        raise ValueError(f"{cfg.train}: active learning needs a committee: set ensemble >= 2")
    train(tcfg, resume=(folder / "train" / "checkpoint.pt").is_file(), progress=progress)
    return model_path


def _label(cfg: LearnConfig, inputs: Path, out: Path, progress: bool) -> list[Structure]:
    """Label `inputs` into `out` (resumable); returns the labelled records."""
    from mlsim.data import label

    done = out.with_suffix(".done")
    if not done.is_file():
        method, options = labeller_options(cfg.reference)
        label(inputs, out, method, progress=progress, **options)
        write_json(done, {"labels": str(out.name)})
    return _read_or_empty(out)


def _bootstrap(
    cfg: LearnConfig,
    out: Path,
    state: dict,
    structures: Path,
    starts: list[Structure],
    progress: bool,
) -> Path:
    """Iteration 0: the first committee, from initial_model, initial_data or cheap MD samples."""
    if cfg.initial_model:
        return cfg.path(cfg.initial_model)
    folder = out / "iter_000"
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.initial_data:
        data = list(read(cfg.path(cfg.initial_data)))
    else:
        samples = folder / "samples.extxyz"
        if not samples.is_file():
            from mlsim.learn._initial import initial_samples

            frames = initial_samples(
                cfg.initial_samples, structures, starts, folder, cfg.seed, progress
            )
            frames = frames[: cfg.max_labels]
            # Bare geometries: the reference labels them, whatever the sampler computed.
            write(
                samples,
                [Structure(f.numbers, f.positions, f.cell, f.pbc, info=f.info) for f in frames],
            )
        data = _label(cfg, samples, folder / "labels.extxyz", progress)
        state["n_labels"] = len(data)
    return _train(cfg, data, folder, None, progress)


def _calibration(
    labels: list[Structure], mean: list[np.ndarray], std: list[np.ndarray], selected: list[int]
) -> dict[str, float] | None:
    """Spread vs observed force error on the frames just labelled (before retraining)."""
    from mlsim.models._uncertainty import calibrate

    spread, error = [], []
    for rec in labels:
        k = selected[int(rec.info["label_index"])]
        spread.append(std[k])
        error.append(np.linalg.norm(np.asarray(rec.forces) - mean[k], axis=1))
    if sum(len(s) for s in spread) < 3:
        return None
    return calibrate(np.concatenate(spread), np.concatenate(error)).to_dict()


def _iteration(
    cfg: LearnConfig,
    out: Path,
    state: dict,
    starts: list[Structure],
    model_path: Path,
    labelled: list[Structure],
    progress: bool,
) -> Path | None:
    """Run iteration state['iteration']; returns the new model, or None when converged."""
    from mlsim.learn._explore import explore
    from mlsim.learn._select import select

    it = int(state["iteration"])
    folder = out / f"iter_{it:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    walkers_path = folder / "walkers.json"
    frames_path, arrays_path = folder / "explore.extxyz", folder / "explore_committee.npz"
    if not walkers_path.is_file():
        results = explore(str(model_path), starts, cfg, it, progress=progress)
        frames = [f for r in results for f in r.frames]
        if frames:
            write(frames_path, frames)
            with atomic_path(arrays_path, suffix=".npz") as tmp:
                np.savez(
                    tmp,
                    forces_mean=np.concatenate([m for r in results for m in r.forces_mean]),
                    forces_std=np.concatenate([s for r in results for s in r.forces_std]),
                    n_atoms=np.array([len(f) for f in frames]),
                )
        write_json(
            walkers_path, {"model": str(model_path), "walkers": [r.summary() for r in results]}
        )
    walkers = json.loads(walkers_path.read_text())["walkers"]
    frames = _read_or_empty(frames_path)
    mean: list[np.ndarray] = []
    std: list[np.ndarray] = []
    if frames:
        arr = np.load(arrays_path)
        offsets = np.concatenate([[0], np.cumsum(arr["n_atoms"])])
        mean = [arr["forces_mean"][a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        std = [arr["forces_std"][a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    u = np.array([float(f.info["max_force_uncertainty"]) for f in frames])
    row: dict[str, Any] = {
        "iteration": it,
        "model": str(model_path),
        "walkers": walkers,
        "n_frames": len(frames),
        "n_candidates": int(((u >= cfg.lower) & (u < cfg.upper)).sum()),
    }
    # Converged: at the target temperatures every walker ran to the end, never above `lower`.
    target = [w for w in walkers if w["temperature_K"] in cfg.target_temperatures]
    confident_fs = sum(w["steps_run"] for w in target) * cfg.timestep_fs
    if (
        all(w["stop_reason"] == "completed" and w["max_uncertainty"] < cfg.lower for w in target)
        and confident_fs >= cfg.target_fs
    ):
        row["converged"] = True
        state["history"].append(row)
        return None
    selected_path = folder / "selected.json"
    if not selected_path.is_file():
        budget = cfg.max_labels - int(state["n_labels"])
        picked = select(frames, u, cfg.lower, cfg.upper, min(cfg.max_per_iteration, budget))
        write_json(selected_path, picked)
    picked = json.loads(selected_path.read_text())
    row["n_selected"] = len(picked)
    if not picked:
        # Nothing between the thresholds: walkers stopped above `upper` at once. Lower the
        # temperature ladder or raise `upper`; retraining on the same data would change nothing.
        row["stalled"] = True
        state["history"].append(row)
        return model_path
    sel_file = folder / "selected.extxyz"
    if not sel_file.is_file():
        write(sel_file, [frames[k] for k in picked])
    new = _label(cfg, sel_file, folder / "labels.extxyz", progress)
    row["n_labelled"] = len(new)
    row["calibration"] = _calibration(new, mean, std, picked)
    state["n_labels"] = int(state["n_labels"]) + len(picked)
    new_model = _train(cfg, labelled + new, folder, model_path, progress)
    summary = json.loads((folder / "train" / "summary.json").read_text())
    row["train"] = {
        k: summary.get(k) for k in ("stop_reason", "epochs", "train_time_s", "val", "test")
    }
    row["n_labels_total"] = state["n_labels"]
    state["history"].append(row)
    return new_model


def learn(cfg: LearnConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the active-learning loop of `cfg`; returns the final state."""
    from mlsim.learn._report import write_report

    out = cfg.path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(cfg, out, resume)
    structures = _structures_path(cfg, out)
    starts = read_starts(structures)
    if not starts:
        raise ValueError(f"{cfg.structures}: no starting structures")
    check_reference(cfg.reference, [z for s in starts for z in s.numbers])
    labelled = list(read(cfg.path(cfg.initial_data))) if cfg.initial_data else []
    if state["iteration"] == 0:
        model_path = _bootstrap(cfg, out, state, structures, starts, progress)
        state["model"] = str(model_path)
        state["iteration"] = 1
        write_json(out / "state.json", state)
    if not cfg.initial_data:
        labelled += _read_or_empty(out / "iter_000" / "labels.extxyz")
    for k in range(1, int(state["iteration"])):
        labelled += _read_or_empty(out / f"iter_{k:03d}" / "labels.extxyz")
    model_path = Path(state["model"])
    while state["status"] == "running":
        if state["iteration"] > cfg.max_iterations:
            state["status"] = "max_iterations"
            break
        if state["n_labels"] >= cfg.max_labels:
            state["status"] = "budget"
            break
        _log(f"iteration {state['iteration']}: exploring with {model_path}")
        new_model = _iteration(cfg, out, state, starts, model_path, labelled, progress)
        folder = out / f"iter_{int(state['iteration']):03d}"
        if new_model is None:
            state["status"] = "converged"
        else:
            labelled += _read_or_empty(folder / "labels.extxyz")
            model_path = new_model
            state["model"] = str(model_path)
            if state["history"][-1].get("stalled"):
                state["status"] = "stalled"
        state["iteration"] = int(state["iteration"]) + (new_model is not None)
        write_json(out / "state.json", state)
    final = out / "model.pt"
    with atomic_path(final) as tmp:
        shutil.copyfile(model_path, tmp)
    state["final_model"] = str(final)
    write_json(out / "state.json", state)
    write_report(out, state, cfg)
    _log(
        f"{state['status']} after {len(state['history'])} iterations, {state['n_labels']} labels; "
        f"model {final}, report {out / 'report.md'}"
    )
    return state


def labelled_dataset(out: str | Path) -> Dataset:
    """Every structure a learn run in `out` has labelled, in order."""
    out = Path(out)
    frames: list[Structure] = []
    for folder in sorted(out.glob("iter_*")):
        frames += _read_or_empty(folder / "labels.extxyz")
    return Dataset(frames)
