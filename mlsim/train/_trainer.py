"""The training loop behind `mlsim train`: energies + forces, AdamW, EMA, early stopping, resume, DDP.

Data parallelism: under `torchrun` every rank takes an equal contiguous share of each global batch
(the same seeded permutation on every rank), computes its share of the *global-mean* loss, and the
gradients are summed with one all_reduce (gloo on CPU, nccl on GPU). This is what DDP does; it is
done by hand because DDP's bucketed hooks do not support the double backward that force training
needs. The result equals a single-process run with the same global batch up to float summation
order. Rank 0 alone writes checkpoints, logs and the model.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlsim._fileio import atomic_path, atomic_write, write_text
from mlsim.models import (
    Ensemble,
    build_model,
    compute_properties,
    fit_self_energies,
    force_rms,
    save_model,
)
from mlsim.train._batching import Batch, TensorData
from mlsim.train._config import TrainConfig, resume_changes
from mlsim.train._ema import EMA
from mlsim.train._evaluate import metrics_from_predictions, predict

__all__ = ["CheckpointError", "OutputWriteError", "read_structures", "split_indices", "train"]

CHECKPOINT_FORMAT = "mlsim-checkpoint/1"
_CHECKPOINT_KEYS = ("spec", "train_idx", "model", "optimizer", "scheduler", "ema", "state", "rng")


class OutputWriteError(OSError):
    """A training output (checkpoint, log, model) could not be written: disk full, quota, size limit."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: truncated, corrupt, or from a different run."""


LOG_FIELDS = [
    "epoch",
    "time_s",
    "lr",
    "train_loss",
    "val_energy_mae_meV_per_atom",
    "val_force_mae_meV_per_A",
    "val_force_rmse_meV_per_A",
]


def read_structures(path: Path) -> list:
    """Read a labelled data file with mlsim.data (any format it supports) into a list."""
    from mlsim.data import read

    ds = read(path)
    return [ds[i] for i in range(len(ds))]


def split_indices(n: int, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split (depends only on n and the config).

    With `val_data` set, validation comes from that file and the returned validation indices are
    empty: the whole pool (or its seeded first `n_train`) trains.
    """
    if cfg.val_data:
        n_val = 0
    else:
        n_val = cfg.n_val if cfg.n_val is not None else max(1, int(round(cfg.val_fraction * n)))
    if n_val >= n:
        raise ValueError(f"validation set ({n_val}) leaves no training data out of {n} structures")
    perm = np.random.default_rng(cfg.seed).permutation(n)
    val, rest = np.sort(perm[:n_val]), perm[n_val:]
    if cfg.n_train is not None:
        if cfg.n_train > len(rest):
            raise ValueError(
                f"n_train={cfg.n_train} but only {len(rest)} structures remain"
                + ("" if cfg.val_data else " after validation")
            )
        rest = rest[: cfg.n_train]
    return np.sort(rest), val


def _stop_reason(state: dict[str, Any], cfg: TrainConfig) -> str | None:
    """Why training must stop now (early stopping or time budget), or None to go on."""
    if state["bad_epochs"] >= cfg.early_stopping_patience:
        return "early_stopping"
    if cfg.time_budget_min is not None and state["elapsed"] >= 60 * cfg.time_budget_min:
        return "time_budget"
    return None


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save through mlsim's atomic writer (never a half-written file)."""
    # Serialised in memory first: a failed write then surfaces as Python's OSError with its errno
    # (EFBIG, ENOSPC) instead of torch's errno-less "file write failed".
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getbuffer())


def _atomic_text(text: str, path: Path) -> None:
    """Write text atomically."""
    write_text(path, text)


def _why(exc: BaseException) -> str:
    """Why a write failed, in one line (the OS error when there is one)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{os.strerror(exc.errno)} (errno {exc.errno})"
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _is_write_failure(exc: BaseException) -> bool:
    """An OS error, or torch's C++ writer failing (a RuntimeError that carries no errno)."""
    if isinstance(exc, OSError):
        return True
    text = f"{exc} {exc.__context__ or ''}".lower()
    return "write failed" in text or "failed writing" in text


def _write_output(
    what: str, path: Path, write: Callable[..., Any], *args: Any, after: str = ""
) -> None:
    """Run `write(*args)`; a failure becomes OutputWriteError naming the file (the old one is kept)."""
    try:
        write(*args)
    except (OSError, RuntimeError) as exc:
        if not _is_write_failure(exc):
            raise  # e.g. a TorchScript error in save_model: not a disk problem
        raise OutputWriteError(
            f"cannot write the {what} {path}: {_why(exc)} (disk full, quota or file-size limit?); "
            f"nothing half-written was left behind{after}"
        ) from exc


class _RunLog:
    """Events of a run in words (OUTPUT/train.log, kept across resumes) and on stderr.

    log.csv has one row per epoch; this file holds what happened around them: resumes, changed
    settings, warnings, why training stopped.
    """

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def info(self, message: str) -> None:
        """Record an event."""
        self._add("info", message)

    def warning(self, message: str) -> None:
        """Record a warning (also printed on stderr as 'warning: ...')."""
        self._add("warning", message)

    def _add(self, level: str, message: str) -> None:
        if not self.enabled:
            return
        prefix = "mlsim train: warning: " if level == "warning" else "mlsim train: "
        print(prefix + message, file=sys.stderr, flush=True)
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {level}: {message}\n"
        old = self.path.read_text() if self.path.exists() else ""
        _write_output("log", self.path, write_text, self.path, old + line)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint for --resume; CheckpointError saying what to do when it is unusable."""
    what_now = (
        f"delete it (rm {path}) to restart training from scratch in this folder, or restore "
        "a copy of it"
    )
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch/zip/pickle raise many types (RuntimeError, EOFError, OSError)
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(
            f"the checkpoint {path} ({size} bytes) is truncated or corrupt and cannot be "
            f"resumed ({type(exc).__name__}: {_why(exc)}); {what_now}"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(
            f"{path} is not an mlsim training checkpoint (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT!r}); {what_now}"
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise CheckpointError(f"the checkpoint {path} is corrupt (it lacks {missing}); {what_now}")
    return ck


def _check_data_file(key: str, path: Path) -> None:
    """Fail now, naming the config key, if a data file is missing, unreadable or not parseable.

    Cheap (the first frame or the file's index only), so a typo in test_data is found before the
    run rather than after it.
    """
    from mlsim.data._io import format_of

    if not path.exists():
        raise FileNotFoundError(f"{key}: data file {path} not found")
    if path.is_dir():
        raise ValueError(f"{key}: {path} is a folder, not a data file")
    fmt = format_of(path)
    try:
        if fmt == "extxyz":
            _check_extxyz_head(path)
        elif fmt == "npz":
            import zipfile

            if not zipfile.is_zipfile(path):  # np.load would try (and blame) pickle
                raise ValueError("not an npz (zip) archive")
            with np.load(path, allow_pickle=False) as f:
                names = set(f.files)
            if not ({"z", "R"} <= names or {"nuclear_charges", "coords"} <= names):
                raise ValueError(f"no z/R (or nuclear_charges/coords) arrays, only {sorted(names)}")
        elif fmt == "db":
            with open(path, "rb") as fh:
                if fh.read(16) != b"SQLite format 3\x00":
                    raise ValueError("not an SQLite database (ASE .db)")
        else:
            from ase.io import read as ase_read

            ase_read(path, index=0)
    except Exception as exc:  # the parsers raise many types; name the key and the file
        raise ValueError(f"{key}: cannot read {path} as {fmt}: {_why(exc)}") from None


def _check_extxyz_head(path: Path) -> None:
    """Parse the first frame of an extxyz(.gz) file; ValueError saying what is wrong."""
    import gzip

    from ase.io import read as ase_read

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        first = fh.readline()
        while first and not first.strip():
            first = fh.readline()
        if not first:
            raise ValueError("the file is empty")
        try:
            n = int(first.split()[0])
        except (ValueError, IndexError):
            raise ValueError(
                f"the first line should be the atom count, found {first.strip()[:60]!r}"
            ) from None
        lines = [first]
        for _ in range(n + 1):
            line = fh.readline()
            if not line:
                raise ValueError(f"the first frame ends after {len(lines)} of {n + 2} lines")
            lines.append(line)
    ase_read(io.StringIO("".join(lines)), index=0, format="extxyz")


def _read_labelled(key: str, cfg: TrainConfig, path_value: str) -> list:
    """read_structures for the config key `key`; errors name the key."""
    path = cfg.path(path_value)
    try:
        structures = read_structures(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{key}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if not structures:
        raise ValueError(f"{key}: {path} holds no structures")
    return structures


def _undertrained(stop_reason: str, cfg: TrainConfig, lr_now: float, epoch: int) -> str | None:
    """A warning when the time budget ended training before the learning rate decayed."""
    if stop_reason != "time_budget":
        return None  # early stopping or the epoch limit: the run ended on its own terms
    if cfg.schedule == "plateau":
        decayed = lr_now < cfg.lr * (1 - 1e-9)
        state = "the plateau schedule never reduced it"
    else:
        # Cosine decays every epoch; less than half of the way down to min_lr is under-trained.
        decayed = lr_now <= cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr)
        state = f"the cosine schedule over {cfg.epochs} epochs is less than half done"
    if decayed:
        return None
    return (
        f"the time budget (time_budget_min = {cfg.time_budget_min}) ended training at epoch "
        f"{epoch} before the learning rate decayed (lr = {lr_now:.3g}, initial {cfg.lr:.3g}: "
        f"{state}) and before early stopping triggered: the model is probably under-trained. "
        "Continue it with --resume --time-budget-min LARGER, or give it more time."
    )


def _warm_start_spec(cfg: TrainConfig, spec: dict[str, Any], elements: list[int]) -> dict[str, Any]:
    """The init_model's spec, after checking it is the architecture this config asks for."""
    from mlsim.models import load_metadata

    path = cfg.path(cfg.init_model)
    if not path.is_file():
        raise FileNotFoundError(f"init_model: model file not found: {path}")
    old = load_metadata(path)["spec"]

    def shape(s: dict[str, Any]) -> Any:
        if s["architecture"] == "ensemble":
            return ("ensemble", [shape(m) for m in s["members"]])
        hp = {k: v for k, v in (s.get("hyperparameters") or {}).items() if k != "energy_scale"}
        return (s["architecture"], sorted(hp.items()))

    if shape(old) != shape(spec):
        raise ValueError(
            f"init_model: {path} is {shape(old)}, but this config builds {shape(spec)}; "
            "warm starts need the same architecture, hyperparameters and ensemble size"
        )
    members = old["members"] if old["architecture"] == "ensemble" else [old]
    missing = sorted(set(elements) - {int(z) for z in members[0]["elements"]})
    if missing:
        raise ValueError(f"init_model: {path} does not know elements {missing} of the data")
    return old


def _members(model: nn.Module) -> list[nn.Module]:
    """The independently trained networks (one unless an ensemble)."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


def _batch_loss(model: nn.Module, b: Batch, cfg: TrainConfig, n_e: int, n_f: int) -> torch.Tensor:
    """This rank's share of the global-mean loss (divided by global label counts, not local ones)."""
    total = torch.zeros((), dtype=b.positions.dtype, device=b.positions.device)
    for member in _members(model):
        out = compute_properties(
            member, *b.inputs(), forces=cfg.forces_weight > 0, create_graph=True
        )
        if cfg.energy_weight > 0 and n_e > 0:
            de = (out["energy"] - b.energy.to(out["energy"].dtype)) / b.n_atoms
            total = total + cfg.energy_weight * (de[b.has_energy] ** 2).sum() / n_e
        if cfg.forces_weight > 0 and n_f > 0:
            df = out["forces"] - b.forces
            total = total + cfg.forces_weight * (df[b.has_forces] ** 2).sum() / (3 * n_f)
    return total


def _rng_state() -> dict[str, Any]:
    """All random generator states, so a resumed run continues the same random streams."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - global state some user code still uses
        "python": random.getstate(),
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    """Restore _rng_state()."""
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])  # noqa: NPY002
    random.setstate(s["python"])


def _plots(out: Path, history: list[dict], pred: dict[str, np.ndarray], label: str) -> None:
    """Parity plot (energy per atom, force components) and learning curve, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 4.2))
    he, hf = pred["has_energy"], pred["has_forces"]
    n = pred["n_atoms"][he]
    e_ref = pred["energy_ref"][he] / n
    e_pred = pred["energy_pred"][he] / n
    m = metrics_from_predictions(pred)
    shift = e_ref.mean() if e_ref.size else 0.0
    ax[0].plot((e_ref - shift) * 1000, (e_pred - shift) * 1000, ".", ms=3)
    ax[0].set_xlabel("reference energy per atom - mean (meV)")
    ax[0].set_ylabel("predicted (meV)")
    ax[0].set_title(f"{label}: energy MAE {m['energy_mae_meV_per_atom']:.2f} meV/atom")
    f_ref = pred["forces_ref"][hf].ravel()
    f_pred = pred["forces_pred"][hf].ravel()
    ax[1].plot(f_ref, f_pred, ".", ms=1, alpha=0.5)
    ax[1].set_xlabel("reference force component (eV/A)")
    ax[1].set_ylabel("predicted (eV/A)")
    ax[1].set_title(f"force MAE {m['force_mae_meV_per_A']:.1f} meV/A")
    for a in ax:
        lo, hi = a.get_xlim()
        a.plot([lo, hi], [lo, hi], "k-", lw=0.5)
    fig.tight_layout()
    with atomic_path(out / "parity.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] for h in history]
    ax.semilogy(ep, [h["val_force_mae_meV_per_A"] for h in history], label="val force MAE (meV/A)")
    ax.semilogy(
        ep, [h["val_energy_mae_meV_per_atom"] for h in history], label="val energy MAE (meV/atom)"
    )
    ax.set_xlabel("epoch")
    ax.legend()
    ax2 = ax.twinx()
    ax2.semilogy(ep, [h["train_loss"] for h in history], "k:", lw=0.8)
    ax2.set_ylabel("train loss (dotted)")
    fig.tight_layout()
    with atomic_path(out / "learning_curve.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: cuda was requested but no CUDA GPU is available")
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world <= 1:
        return 0, 1, dev
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def _all_reduce_grads(params: list[torch.nn.Parameter], extra: torch.Tensor) -> torch.Tensor:
    """Sum gradients (and a few scalars) over ranks with one flattened all_reduce."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [extra.reshape(-1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    k = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[k : k + n].view_as(p).clone()
        k += n
    return flat[k:]


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train per `cfg`; returns a summary dict (also written to OUTPUT/summary.json).

    `stop_after_epochs` ends this process after that many epochs *of this call* without the final
    model/plots, as if interrupted: used to test that --resume continues bit-for-bit.
    """
    cfg.validate()  # also for configs built in Python rather than read by load_config
    rank, world, device = _distributed(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    out = cfg.path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    runlog = _RunLog(out / "train.log", enabled=rank == 0)
    if not resume and ckpt_path.exists() and rank == 0:
        raise ValueError(
            f"{ckpt_path} exists; pass --resume to continue it or choose another output folder"
        )
    ck: dict[str, Any] | None = None
    changed: list[str] = []
    if resume:
        # Loaded and compared first, so a corrupt checkpoint or a changed setting fails at once.
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ck = _load_checkpoint(ckpt_path)
        if isinstance(ck.get("config"), dict):
            forbidden, changed = resume_changes(ck["config"], cfg)
            if forbidden:
                raise CheckpointError(
                    f"cannot resume {ckpt_path}: these settings differ from the checkpoint's "
                    f"(old -> new): {'; '.join(forbidden)}. They shaped the run so far and cannot "
                    "change mid-run: restore them, or start a new run in another output folder"
                )

    # Every data file is checked before the (long) training, not only when it is first needed.
    for key in ("data", "val_data", "test_data"):
        if getattr(cfg, key):
            _check_data_file(key, cfg.path(getattr(cfg, key)))
    structures = _read_labelled("data", cfg, cfg.data)
    if any(s.forces is None for s in structures) and cfg.forces_weight > 0:
        raise ValueError(f"data: {cfg.data}: every structure needs forces when forces_weight > 0")
    train_idx, val_idx = split_indices(len(structures), cfg)
    train_set = [structures[i] for i in train_idx]
    val_set = [structures[i] for i in val_idx]
    if cfg.val_data:
        val_set = _read_labelled("val_data", cfg, cfg.val_data)
        if any(s.forces is None for s in val_set):
            raise ValueError(f"val_data: {cfg.val_data}: every structure needs forces")
    elements = sorted({int(z) for s in structures for z in s.numbers})
    unseen = sorted({int(z) for s in val_set for z in s.numbers} - set(elements))
    if unseen:
        raise ValueError(f"validation structures contain elements {unseen} absent from {cfg.data}")
    test_set = None
    if cfg.test_data and rank == 0:
        test_set = _read_labelled("test_data", cfg, cfg.test_data)
        unseen = sorted({int(z) for s in test_set for z in s.numbers} - set(elements))
        if unseen:
            raise ValueError(
                f"test_data: {cfg.test_data} contains elements {unseen} absent from {cfg.data}"
            )
    train_data = TensorData(train_set, dtype)

    torch.manual_seed(cfg.seed)
    member_spec = {
        "architecture": cfg.model["architecture"],
        "elements": elements,
        "self_energies": {str(z): e for z, e in fit_self_energies(train_set, elements).items()},
        "hyperparameters": {
            **(cfg.model.get("hyperparameters") or {}),
            "energy_scale": force_rms(train_set),
        },
    }
    spec = (
        member_spec
        if cfg.ensemble == 1
        else {"architecture": "ensemble", "members": [member_spec] * cfg.ensemble}
    )
    if cfg.init_model:
        spec = _warm_start_spec(cfg, spec, elements)
    model = build_model(spec).to(dtype=dtype, device=device)
    if cfg.init_model and not resume:
        from mlsim.models import load_model

        # The shifts and scales come with the weights: the networks were trained against them.
        model.load_state_dict(load_model(cfg.path(cfg.init_model)).state_dict())
    elif not resume:
        # Input standardisation (ANI's AEV statistics) from up to 500 training structures.
        sample = train_data.batch(np.arange(min(len(train_data), 500))).to(device)
        for member in _members(model):
            if hasattr(member, "fit_input_scaling"):
                member.fit_input_scaling(*sample.inputs())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "plateau":
        sched: Any = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode="min",
            factor=cfg.plateau_factor,
            patience=cfg.plateau_patience,
            min_lr=cfg.min_lr,
        )
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=cfg.epochs, eta_min=cfg.min_lr
        )
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    state: dict[str, Any] = {
        "epoch": 0,
        "best_val": math.inf,
        "best_epoch": -1,
        "bad_epochs": 0,
        "elapsed": 0.0,
        "best_state": None,
        "history": [],
    }

    saved_epoch: int | None = None  # the epoch of the checkpoint on disk, if any
    if ck is not None:
        if ck["spec"] != spec or not np.array_equal(ck["train_idx"], train_idx):
            raise CheckpointError(
                f"{ckpt_path} was written for a different data set or model; cannot resume"
            )
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])
            ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
        state = ck["state"]
        _set_rng_state(ck["rng"])
        saved_epoch = state["epoch"]
        runlog.info(
            f"resuming {ckpt_path} at epoch {saved_epoch}"
            + (f" with changed settings (old -> new): {'; '.join(changed)}" if changed else "")
        )
        del ck  # the weights now live in the model; do not keep a second copy
    else:
        runlog.info(f"training from scratch into {out}")

    def eval_model() -> nn.Module:
        """A copy of the model carrying the EMA weights (or the raw ones without EMA)."""
        m = copy.deepcopy(model)
        if ema is not None:
            m.load_state_dict(ema.shadow)
        return m.eval()

    from tqdm import tqdm

    bar = tqdm(
        total=cfg.epochs,
        initial=state["epoch"],
        desc="train",
        unit="epoch",
        file=sys.stderr,
        disable=not progress or rank != 0,
    )
    epochs_this_call = 0
    stop_reason = "epochs"
    n_train = len(train_data)
    while state["epoch"] < cfg.epochs:
        # Checked before the epoch too, so resuming a run that already stopped trains no further.
        stop_reason = _stop_reason(state, cfg) or stop_reason
        if stop_reason != "epochs":
            break
        t0 = time.perf_counter()
        epoch = state["epoch"]
        model.train()
        # The permutation depends only on (seed, epoch): identical on every rank and after resume.
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(n_train)
        loss_sum = 0.0
        for start in range(0, n_train, cfg.batch_size):
            chunk = perm[start : start + cfg.batch_size]
            n_e = int(train_data.has_energy[torch.from_numpy(chunk)].sum())
            n_f = int(
                sum(
                    int(train_data.n_atoms[k])
                    for k in chunk
                    if bool(train_data.has_forces[train_data.ptr[k]])
                )
            )
            local = np.array_split(chunk, world)[rank]
            opt.zero_grad(set_to_none=False)
            if len(local):
                loss = _batch_loss(model, train_data.batch(local).to(device), cfg, n_e, n_f)
                loss.backward()
                loss_val = loss.detach()
            else:
                loss_val = torch.zeros((), device=device)
            if world > 1:
                loss_val = _all_reduce_grads(params, loss_val)[0]
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            if ema is not None:
                ema.update(model)
            loss_sum += float(loss_val) * len(chunk)
        pred = predict(eval_model(), val_set, cfg.eval_batch_size, dtype=dtype)
        vm = metrics_from_predictions(pred)
        val_f = (
            vm["force_mae_meV_per_A"] if cfg.forces_weight > 0 else vm["energy_mae_meV_per_atom"]
        )
        if val_f is None:
            raise ValueError("the validation structures carry no labels for the validation metric")
        lr = opt.param_groups[0]["lr"]
        if cfg.schedule == "plateau":
            sched.step(val_f)
        else:
            sched.step()
        state["elapsed"] += time.perf_counter() - t0
        state["epoch"] = epoch + 1
        if val_f < state["best_val"]:
            state.update(best_val=val_f, best_epoch=epoch + 1, bad_epochs=0)
            state["best_state"] = {k: v.clone() for k, v in eval_model().state_dict().items()}
        else:
            state["bad_epochs"] += 1
        row = {
            "epoch": epoch + 1,
            "time_s": round(state["elapsed"], 3),
            "lr": lr,
            "train_loss": loss_sum / n_train,
            "val_energy_mae_meV_per_atom": vm["energy_mae_meV_per_atom"],
            "val_force_mae_meV_per_A": vm["force_mae_meV_per_A"],
            "val_force_rmse_meV_per_A": vm["force_rmse_meV_per_A"],
        }
        state["history"].append(row)
        if rank == 0:
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "config": dataclasses.asdict(cfg),
                "spec": spec,
                "train_idx": train_idx,
                "val_idx": val_idx,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "state": state,
                "rng": _rng_state(),
            }
            after = (
                f"; the previous checkpoint {ckpt_path} (epoch {saved_epoch}) is intact: free "
                "some space, then continue with --resume"
                if saved_epoch is not None
                else "; no checkpoint has been written yet"
            )
            _write_output("checkpoint", ckpt_path, _atomic_save, ckpt, ckpt_path, after=after)
            saved_epoch = state["epoch"]
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(state["history"])
            _write_output(
                "epoch log", out / "log.csv", _atomic_text, buf.getvalue(), out / "log.csv"
            )
        bar.update(1)
        bar.set_postfix(
            loss=f"{row['train_loss']:.3g}",
            val_F=f"{val_f:.1f}",
            best=f"{state['best_val']:.1f}",
            lr=f"{lr:.1e}",
        )
        epochs_this_call += 1
        stop_reason = _stop_reason(state, cfg) or stop_reason
        if stop_reason != "epochs":
            break
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            bar.close()
            return {"stopped": "interrupted", "epoch": state["epoch"]}
    bar.close()

    lr_now = float(opt.param_groups[0]["lr"])
    warning = _undertrained(stop_reason, cfg, lr_now, state["epoch"])
    summary: dict[str, Any] = {
        "stop_reason": stop_reason,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "train_time_s": state["elapsed"],
        "n_train": int(len(train_idx)),
        "n_val": len(val_set),
        "world_size": world,
        "final_lr": lr_now,
        "warnings": [warning] if warning else [],
    }
    if rank == 0:
        runlog.info(
            f"training stopped ({stop_reason}) after epoch {state['epoch']}; best epoch "
            f"{state['best_epoch']}, lr {lr_now:.3g}"
        )
        if warning:
            runlog.warning(warning)
        final = copy.deepcopy(model)
        final.load_state_dict(state["best_state"])
        final.eval()
        pred = predict(final, val_set, cfg.eval_batch_size, dtype=dtype)
        summary["val"] = metrics_from_predictions(pred)
        label = "validation"
        if test_set is not None:
            pred = predict(final, test_set, cfg.eval_batch_size, progress=progress, dtype=dtype)
            summary["test"] = metrics_from_predictions(pred)
            label = "test"
        model_path = out / "model.pt"
        _write_output(
            "model",
            model_path,
            save_model,
            final.float().cpu(),
            model_path,
            spec,
            {"training": summary},
        )
        if cfg.plots:
            _write_output("plots", out, _plots, out, state["history"], pred, label)
        summary_text = json.dumps(summary, indent=1)
        _write_output(
            "summary", out / "summary.json", _atomic_text, summary_text, out / "summary.json"
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return summary
