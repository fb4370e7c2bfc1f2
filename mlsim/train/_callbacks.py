"""Callbacks: what the Trainer does besides training, each concern in one class with a few hooks.

The Trainer calls the hooks of its callbacks in list order:

    setup(trainer)                 before any data is read: fail fast (an unusable checkpoint)
    on_fit_start(trainer)          model, optimizer and scheduler built: initialise or restore
    on_epoch_start(trainer)        before each epoch (trainer.stop() here: no further epoch)
    on_batch_end(trainer, loss)    after each optimizer step; loss of the global batch
    on_evaluation_copy(trainer, m) a copy of the model is about to be validated or exported
    on_epoch_end(trainer, row)     after validation and the LR step; row = this epoch's log.csv row
    on_fit_end(trainer, summary)   training finished (not interrupted); add to the summary, export
    teardown(trainer)              always last, also after an interruption or an error

A callback that sets `state_key` has its `state_dict()` saved in checkpoint.pt under that key and
handed back to `load_state_dict()` on --resume. The built-in ones: moving average of the weights,
checkpoint (in _checkpoint.py), log.csv, progress bar, early stopping and time budget, model
export, plots, summary.json.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import sys
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mlsim._fileio import write_text
from mlsim.train._ema import EMA
from mlsim.train._outputs import write_output
from mlsim.train._plots import plot_run

if TYPE_CHECKING:
    from mlsim.train._trainer import Trainer

__all__ = [
    "LOG_FIELDS",
    "Callback",
    "EpochLog",
    "ExportModel",
    "InterruptAfter",
    "MovingAverage",
    "Plots",
    "ProgressBar",
    "StopCriteria",
    "WriteSummary",
]


class Callback:
    """Base class of the Trainer's callbacks: override the hooks you need (here they do nothing)."""

    state_key: str | None = None  # key of state_dict() in checkpoint.pt (None: nothing saved)

    def setup(self, trainer: Trainer) -> None:
        """Before the data are read and the model is built: check what can fail fast."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Model, optimizer and scheduler are built (a checkpoint is restored by Checkpoint here)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Before each epoch; trainer.state['epoch'] epochs are done."""

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        """After each optimizer step; `loss` is the global batch's mean loss."""

    def on_evaluation_copy(self, trainer: Trainer, model: nn.Module) -> None:
        """`model`, a copy of the trainer's, is about to be validated or exported: adjust its weights."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After validation and the LR step; `row` is the epoch's log.csv row (also in state['history'])."""

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Training finished; `summary` (returned by train(), saved in summary.json) may be extended."""

    def teardown(self, trainer: Trainer) -> None:
        """Always called last, also after an interruption or an error."""

    def state_dict(self) -> Any:
        """What to save in checkpoint.pt under `state_key`."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore what state_dict() returned (on --resume)."""


class MovingAverage(Callback):
    """Exponential moving average of the weights; validation, best weights and model.pt use it."""

    state_key = "ema"

    def __init__(self, decay: float) -> None:
        """`decay` per optimizer step (with warm-up, see EMA)."""
        self.decay = decay
        self.ema: EMA | None = None
        self._device: torch.device | None = None
        self._model: nn.Module | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        """Start the average at the initial weights (Checkpoint restores it on --resume)."""
        self.ema = EMA(trainer.model, self.decay)
        self._device = trainer.device
        self._model = trainer.model

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        """Fold the new weights in."""
        assert self.ema is not None
        self.ema.update(trainer.model)

    def on_evaluation_copy(self, trainer: Trainer, model: nn.Module) -> None:
        """Evaluate (and ship) the averaged weights."""
        assert self.ema is not None
        model.load_state_dict(self.ema.shadow)

    def state_dict(self) -> Any:
        """The EMA's state."""
        return self.ema.state_dict() if self.ema is not None else None

    def load_state_dict(self, state: Any) -> None:
        """Restore the EMA onto the training device."""
        assert self.ema is not None
        from mlsim.models._base import upgrade_state_dict

        self.ema.load_state_dict(state)
        # Checkpoints from before the model blocks carry the old parameter names.
        shadow = upgrade_state_dict(self._model, self.ema.shadow)
        self.ema.shadow = {k: v.to(self._device) for k, v in shadow.items()}


class StopCriteria(Callback):
    """Early stopping (early_stopping_patience) and the time budget (time_budget_min).

    Checked before each epoch too, so resuming a run that already stopped trains no further. At the
    end, a warning when the time budget cut training short before the learning rate decayed.
    """

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Stop before the epoch if a criterion already holds."""
        self._check(trainer)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Stop after the epoch if a criterion holds now."""
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        reason = stop_reason(trainer.state, trainer.cfg)
        if reason is not None:
            trainer.stop(reason)

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Warn (train.log, stderr, summary) when the time budget ended training too early."""
        cfg = trainer.cfg
        warning = undertrained(summary["stop_reason"], cfg, summary["final_lr"], summary["epochs"])
        if warning:
            trainer.log.warning(warning)
            summary["warnings"].append(warning)


def stop_reason(state: dict[str, Any], cfg: Any) -> str | None:
    """Why training must stop now (early stopping or time budget), or None to go on."""
    if state["bad_epochs"] >= cfg.early_stopping_patience:
        return "early_stopping"
    if cfg.time_budget_min is not None and state["elapsed"] >= 60 * cfg.time_budget_min:
        return "time_budget"
    return None


def undertrained(reason: str, cfg: Any, lr_now: float, epoch: int) -> str | None:
    """A warning when the time budget ended training before the learning rate decayed."""
    if reason != "time_budget":
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


LOG_FIELDS = [
    "epoch",
    "time_s",
    "lr",
    "train_loss",
    "val_energy_mae_meV_per_atom",
    "val_force_mae_meV_per_A",
    "val_force_rmse_meV_per_A",
]
# Added to log.csv after LOG_FIELDS when the validation structures carry stress labels.
STRESS_LOG_FIELD = "val_stress_mae_meV_per_A3"


class EpochLog(Callback):
    """OUTPUT/log.csv: one row per epoch (the whole history, rewritten atomically; rank 0)."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Rewrite log.csv from the trainer's history."""
        if trainer.rank != 0:
            return
        buf = io.StringIO()
        history = trainer.state["history"]
        fields = LOG_FIELDS + (
            [STRESS_LOG_FIELD] if any(STRESS_LOG_FIELD in r for r in history) else []
        )
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(history)
        path = trainer.out / "log.csv"
        write_output("epoch log", path, write_text, path, buf.getvalue())


class ProgressBar(Callback):
    """A tqdm bar over epochs on stderr (rank 0): loss, validation metric, best, lr."""

    def __init__(self, enabled: bool = True) -> None:
        """`enabled`: show it (rank 0 only in any case)."""
        self.enabled = enabled
        self.bar: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        """Open the bar at the restored epoch."""
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.cfg.epochs,
            initial=trainer.state["epoch"],
            desc="train",
            unit="epoch",
            file=sys.stderr,
            disable=not self.enabled or trainer.rank != 0,
        )

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Advance by one epoch."""
        self.bar.update(1)
        self.bar.set_postfix(
            loss=f"{row['train_loss']:.3g}",
            val_F=f"{trainer.val_metric:.1f}",
            best=f"{trainer.state['best_val']:.1f}",
            lr=f"{row['lr']:.1e}",
        )

    def teardown(self, trainer: Trainer) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ExportModel(Callback):
    """OUTPUT/model.pt: the best weights as TorchScript, in the training dtype (rank 0)."""

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Save trainer.final_model with the summary in its metadata."""
        if trainer.rank != 0:
            return
        from mlsim.models import save_model

        model = trainer.final_model
        if next(model.parameters()).device.type != "cpu":
            model = copy.deepcopy(model).cpu()
        path = trainer.out / "model.pt"
        write_output("model", path, save_model, model, path, trainer.spec, {"training": summary})


class Plots(Callback):
    """parity.png and learning_curve.png (rank 0): test predictions if there is a test set."""

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Draw the final model's parity plot and the learning curve."""
        if trainer.rank != 0:
            return
        pred, label = trainer.final_predictions
        out = trainer.out
        write_output("plots", out, plot_run, out, trainer.state["history"], pred, label)


class WriteSummary(Callback):
    """OUTPUT/summary.json, the last file a finished run writes (rank 0)."""

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Write the summary as JSON."""
        if trainer.rank != 0:
            return
        path = trainer.out / "summary.json"
        write_output("summary", path, write_text, path, json.dumps(summary, indent=1))


class InterruptAfter(Callback):
    """End the run after `epochs` epochs of this call as if killed (no export): tests --resume."""

    def __init__(self, epochs: int) -> None:
        """Interrupt after this many epochs."""
        self.epochs = epochs
        self._done = 0

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Count the epoch; interrupt at the limit."""
        self._done += 1
        if self._done >= self.epochs:
            trainer.interrupt()
