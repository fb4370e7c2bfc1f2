"""checkpoint.pt: written atomically after every epoch, and the bit-for-bit --resume from it.

The format ("mlsim-checkpoint/1") holds the config, the model spec and split, the model, optimizer
and scheduler states, the trainer's state (epoch, best weights, history), every random generator
state, and the state of each callback that declares a `state_key` ("ema" for the moving average).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mlsim.train._callbacks import Callback
from mlsim.train._config import resume_changes
from mlsim.train._outputs import atomic_save, why, write_output

if TYPE_CHECKING:
    from mlsim.train._trainer import Trainer

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "load_checkpoint"]

CHECKPOINT_FORMAT = "mlsim-checkpoint/1"
# Written by the trainer itself; a callback's state_key must be none of these.
CORE_KEYS = (
    "format",
    "config",
    "spec",
    "train_idx",
    "val_idx",
    "model",
    "optimizer",
    "scheduler",
    "state",
    "rng",
)
_REQUIRED_KEYS = ("spec", "train_idx", "model", "optimizer", "scheduler", "ema", "state", "rng")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: truncated, corrupt, or from a different run."""


def load_checkpoint(path: Path) -> dict[str, Any]:
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
            f"resumed ({type(exc).__name__}: {why(exc)}); {what_now}"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(
            f"{path} is not an mlsim training checkpoint (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT!r}); {what_now}"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in ck]
    if missing:
        raise CheckpointError(f"the checkpoint {path} is corrupt (it lacks {missing}); {what_now}")
    return ck


def rng_state() -> dict[str, Any]:
    """All random generator states, so a resumed run continues the same random streams."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - global state some user code still uses
        "python": random.getstate(),
    }


def set_rng_state(s: dict[str, Any]) -> None:
    """Restore rng_state()."""
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])  # noqa: NPY002
    random.setstate(s["python"])


class Checkpoint(Callback):
    """OUTPUT/checkpoint.pt after every epoch (rank 0, atomic); with `resume`, training continues from it.

    A resumed run equals an uninterrupted one bit for bit: weights, optimizer, scheduler, the
    callbacks' states and every random generator state are restored.
    """

    def __init__(self, resume: bool = False) -> None:
        """`resume`: continue OUTPUT/checkpoint.pt (else it must not exist)."""
        self.resume = resume
        self._ck: dict[str, Any] | None = None
        self._changed: list[str] = []
        self.saved_epoch: int | None = None  # the epoch of the checkpoint on disk, if any

    def setup(self, trainer: Trainer) -> None:
        """Refuse to overwrite a run; with resume, load and compare the checkpoint before any data is read."""
        path = trainer.out / "checkpoint.pt"
        if not self.resume and path.exists() and trainer.rank == 0:
            raise ValueError(
                f"{path} exists; pass --resume to continue it or choose another output folder"
            )
        if not self.resume:
            return
        if not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        ck = load_checkpoint(path)
        if isinstance(ck.get("config"), dict):
            forbidden, self._changed = resume_changes(ck["config"], trainer.cfg)
            if forbidden:
                raise CheckpointError(
                    f"cannot resume {path}: these settings differ from the checkpoint's "
                    f"(old -> new): {'; '.join(forbidden)}. They shaped the run so far and cannot "
                    "change mid-run: restore them, or start a new run in another output folder"
                )
        self._ck = ck
        trainer.restoring = True  # the initial weights will be replaced: skip their fitting

    def on_fit_start(self, trainer: Trainer) -> None:
        """Restore the model, optimizer, scheduler, callback states, trainer state and RNG."""
        path = trainer.out / "checkpoint.pt"
        ck, self._ck = self._ck, None  # the weights go into the model: keep no second copy
        if ck is None:
            trainer.log.info(f"training from scratch into {trainer.out}")
            return
        if ck["spec"] != trainer.spec or not np.array_equal(
            ck["train_idx"], trainer.data.train_idx
        ):
            raise CheckpointError(
                f"{path} was written for a different data set or model; cannot resume"
            )
        trainer.model.load_state_dict(ck["model"])
        trainer.optimizer.load_state_dict(ck["optimizer"])
        trainer.scheduler.load_state_dict(ck["scheduler"])
        for cb in trainer.callbacks:
            if cb.state_key is not None and ck.get(cb.state_key) is not None:
                cb.load_state_dict(ck[cb.state_key])
        trainer.state = ck["state"]
        set_rng_state(ck["rng"])
        self.saved_epoch = trainer.state["epoch"]
        changed = self._changed
        trainer.log.info(
            f"resuming {path} at epoch {self.saved_epoch}"
            + (f" with changed settings (old -> new): {'; '.join(changed)}" if changed else "")
        )

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Write the checkpoint (rank 0); a failed write keeps the previous one."""
        if trainer.rank != 0:
            return
        path = trainer.out / "checkpoint.pt"
        ck: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(trainer.cfg),
            "spec": trainer.spec,
            "train_idx": trainer.data.train_idx,
            "val_idx": trainer.data.val_idx,
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "ema": None,  # replaced by the moving-average callback's state when it runs
            "state": trainer.state,
            "rng": rng_state(),
        }
        for cb in trainer.callbacks:
            if cb.state_key is not None:
                ck[cb.state_key] = cb.state_dict()
        after = (
            f"; the previous checkpoint {path} (epoch {self.saved_epoch}) is intact: free "
            "some space, then continue with --resume"
            if self.saved_epoch is not None
            else "; no checkpoint has been written yet"
        )
        write_output("checkpoint", path, atomic_save, ck, path, after=after)
        self.saved_epoch = trainer.state["epoch"]
