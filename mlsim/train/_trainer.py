"""The training loop behind `mlsim train`: a small Trainer (epochs, batches, loss, optimizer, LR
schedule, validation) and `train()`, which runs it with the default callbacks.

Everything else a run does is a callback (mlsim.train._callbacks): the moving average of the
weights, checkpoints and --resume, log.csv, the progress bar, early stopping and the time budget,
model.pt, plots, summary.json. Under torchrun the ranks split every global batch (see
_distributed.py) and read only their own structures from one packed copy of the data (_data.py);
rank 0 alone writes files.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlsim.models import Ensemble, build_model, compute_properties
from mlsim.train._batching import Batch, PackedStructures
from mlsim.train._callbacks import (
    Callback,
    EpochLog,
    ExportModel,
    InterruptAfter,
    MovingAverage,
    Plots,
    ProgressBar,
    StopCriteria,
    WriteSummary,
)
from mlsim.train._checkpoint import CORE_KEYS, Checkpoint, CheckpointError
from mlsim.train._config import TrainConfig
from mlsim.train._data import (
    TrainingData,
    _check_data_file,  # noqa: F401 - tests and older callers import it from here
    prepare_data,
    read_structures,
    remove_packed,
    split_indices,
)
from mlsim.train._distributed import (
    all_reduce_grads,
    barrier,
    broadcast,
    init_distributed,
    sum_arrays,
)
from mlsim.train._evaluate import metrics_from_predictions, predict_share
from mlsim.train._outputs import OutputWriteError, RunLog

__all__ = [
    "CheckpointError",
    "OutputWriteError",
    "Trainer",
    "default_callbacks",
    "read_structures",
    "split_indices",
    "train",
]


def _members(model: nn.Module) -> list[nn.Module]:
    """The independently trained networks (one unless an ensemble)."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


def _batch_loss(
    model: nn.Module, b: Batch, cfg: TrainConfig, n_e: int, n_f: int, n_s: int = 0
) -> torch.Tensor:
    """This rank's share of the global-mean loss (divided by global label counts, not local ones).

    n_e, n_f, n_s: structures with energies, atoms with forces and structures with stresses in
    the global batch. The stress term compares the model's strain derivative (compute_properties)
    with the labels of the structures that have one; the others add nothing to it.
    """
    total = torch.zeros((), dtype=b.positions.dtype, device=b.positions.device)
    stress = cfg.stress_weight > 0 and n_s > 0 and bool(b.has_stress.any())
    inputs = b.strain_inputs() if stress else b.inputs()
    for member in _members(model):
        out = compute_properties(
            member, *inputs, forces=cfg.forces_weight > 0, stress=stress, create_graph=True
        )
        if cfg.energy_weight > 0 and n_e > 0:
            de = (out["energy"] - b.energy.to(out["energy"].dtype)) / b.n_atoms
            total = total + cfg.energy_weight * (de[b.has_energy] ** 2).sum() / n_e
        if cfg.forces_weight > 0 and n_f > 0:
            df = out["forces"] - b.forces
            total = total + cfg.forces_weight * (df[b.has_forces] ** 2).sum() / (3 * n_f)
        if stress:
            ds = out["stress"] - b.stress.to(out["stress"].dtype)
            total = total + cfg.stress_weight * (ds[b.has_stress] ** 2).sum() / (9 * n_s)
    return total


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


class Trainer:
    """Fits a potential per a TrainConfig: the loop itself, with every other concern in `callbacks`.

    During fit() the callbacks see: cfg, rank, world, device, dtype, out (the output folder), log
    (train.log), data (TrainingData), spec, model, optimizer, scheduler, state (epoch, best_val,
    best_epoch, bad_epochs, elapsed, best_state, history), val_metric (the last validation
    number: force MAE, or energy MAE without force training), and after training final_model
    and final_predictions. They steer it with stop(reason) and interrupt().
    """

    def __init__(
        self, cfg: TrainConfig, callbacks: Sequence[Callback] = (), progress: bool = True
    ) -> None:
        """Nothing is read or built until fit(); `progress` also shows the final test evaluation."""
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.progress = progress
        self.rank, self.world = 0, 1
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.out = Path(".")
        self.log = RunLog(Path("train.log"), enabled=False)
        self.data: TrainingData
        self.spec: dict[str, Any] = {}
        self.model: nn.Module
        self.optimizer: torch.optim.Optimizer
        self.scheduler: Any = None
        self.state: dict[str, Any] = {}
        self.val_metric = math.nan
        self.final_model: nn.Module | None = None
        self.final_predictions: tuple[dict[str, np.ndarray], str] | None = None
        self.restoring = False  # set in setup() by a callback that will restore the weights
        self._stop: str | None = None
        self._interrupted = False
        self._packing = False
        keys = [cb.state_key for cb in self.callbacks if cb.state_key is not None]
        bad = sorted({k for k in keys if k in CORE_KEYS or keys.count(k) > 1})
        if bad:
            raise ValueError(
                f"callback state_key {bad} is taken (by the trainer: {list(CORE_KEYS)}, or by "
                "another callback)"
            )

    # --- what callbacks call ------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Finish after this epoch (final evaluation, model.pt, summary) with `reason` as stop_reason."""
        self._stop = self._stop or reason

    def interrupt(self) -> None:
        """End after this epoch as if killed: the checkpoint is on disk, nothing is exported; resumable."""
        self._interrupted = True

    @property
    def stop_reason(self) -> str | None:
        """Why training is stopping (None while it goes on)."""
        return self._stop

    def evaluation_model(self) -> nn.Module:
        """A copy of the model with the weights to validate and ship (the EMA's when it runs)."""
        m = copy.deepcopy(self.model)
        self._call("on_evaluation_copy", m)
        return m.eval()

    # --- the run ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train; returns the summary (or {'stopped': 'interrupted', 'epoch': n} after interrupt())."""
        self.cfg.validate()  # also for configs built in Python rather than read by load_config
        try:
            self._setup()
            self._call("on_fit_start")
            cfg = self.cfg
            while self.state["epoch"] < cfg.epochs:
                self._call("on_epoch_start")
                if self._agree():
                    break
                row = self._epoch()
                self._call("on_epoch_end", row)
                if self._agree():
                    break
                if self._interrupted:
                    return {"stopped": "interrupted", "epoch": self.state["epoch"]}
            return self._finish()
        finally:
            for cb in self.callbacks:
                cb.teardown(self)
            if self._packing and self.rank == 0:
                remove_packed(self.out)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _agree(self) -> bool:
        """Whether to stop now; under torchrun rank 0's view holds for all (time budgets differ)."""
        if self.world > 1:
            self._stop, self._interrupted = broadcast((self._stop, self._interrupted), self.world)
        return self._stop is not None

    def _setup(self) -> None:
        """Process group, output folder, callbacks' checks, data, model, optimizer, scheduler."""
        cfg = self.cfg
        self.rank, self.world, self.device = init_distributed(cfg.device)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.out = cfg.path(cfg.output)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = RunLog(self.out / "train.log", enabled=self.rank == 0)
        self._call("setup")
        self._packing = True
        self.data = prepare_data(cfg, self.out, self.rank, self.world)
        self._build_model()

    def _build_model(self) -> None:
        cfg, data = self.cfg, self.data
        torch.manual_seed(cfg.seed)
        member_spec = {
            "architecture": cfg.model["architecture"],
            "elements": data.elements,
            "self_energies": {str(z): e for z, e in data.self_energies.items()},
            "hyperparameters": {
                **(cfg.model.get("hyperparameters") or {}),
                "energy_scale": data.energy_scale,
            },
        }
        spec = (
            member_spec
            if cfg.ensemble == 1
            else {"architecture": "ensemble", "members": [member_spec] * cfg.ensemble}
        )
        if cfg.init_model:
            spec = _warm_start_spec(cfg, spec, data.elements)
        self.spec = spec
        model = build_model(spec).to(dtype=self.dtype, device=self.device)
        if cfg.init_model and not self.restoring:
            from mlsim.models import load_model

            # The shifts and scales come with the weights: the networks were trained against them.
            model.load_state_dict(load_model(cfg.path(cfg.init_model)).state_dict())
        elif not self.restoring:
            # Input standardisation (ANI's AEV statistics) from up to 500 training structures.
            n = min(len(data.train), 500)
            sample = data.train.batch(np.arange(n), self.dtype).to(self.device)
            for member in _members(model):
                if hasattr(member, "fit_input_scaling"):
                    member.fit_input_scaling(*sample.inputs())
        self.model = model
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self._params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.schedule == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="min",
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
                min_lr=cfg.min_lr,
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr
            )
        self.state = {
            "epoch": 0,
            "best_val": math.inf,
            "best_epoch": -1,
            "bad_epochs": 0,
            "elapsed": 0.0,
            "best_state": None,
            "history": [],
        }

    def _epoch(self) -> dict[str, Any]:
        """One epoch of training and validation; returns its log row."""
        cfg, state, train = self.cfg, self.state, self.data.train
        clock = time.process_time if cfg.time_budget_clock == "cpu" else time.perf_counter
        t0 = clock()
        epoch = state["epoch"]
        self.model.train()
        n_train = len(train)
        has_energy, has_forces, n_atoms = train.has_energy, train.has_forces, train.n_atoms
        has_stress = train.has_stress
        # The permutation depends only on (seed, epoch): identical on every rank and after resume.
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(n_train)
        loss_sum = 0.0
        for start in range(0, n_train, cfg.batch_size):
            chunk = perm[start : start + cfg.batch_size]
            n_e = int(has_energy[chunk].sum())
            n_f = int(n_atoms[chunk][has_forces[chunk]].sum())
            n_s = int(has_stress[chunk].sum())
            # This rank's equal share of the global batch: the only structures it reads.
            local = np.array_split(chunk, self.world)[self.rank]
            self.optimizer.zero_grad(set_to_none=False)
            if len(local):
                b = train.batch(local, self.dtype).to(self.device)
                loss = _batch_loss(self.model, b, cfg, n_e, n_f, n_s)
                loss.backward()
                loss_val = loss.detach()
            else:
                loss_val = torch.zeros((), device=self.device)
            if self.world > 1:
                loss_val = all_reduce_grads(self._params, loss_val)[0]
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip)
            self.optimizer.step()
            loss_f = float(loss_val)
            self._call("on_batch_end", loss_f)
            loss_sum += loss_f * len(chunk)
        eval_model = self.evaluation_model()
        vm = metrics_from_predictions(self._predict(eval_model, self.data.val))
        val_f = (
            vm["force_mae_meV_per_A"] if cfg.forces_weight > 0 else vm["energy_mae_meV_per_atom"]
        )
        if val_f is None:
            raise ValueError("the validation structures carry no labels for the validation metric")
        self.val_metric = val_f
        lr = self.optimizer.param_groups[0]["lr"]
        if cfg.schedule == "plateau":
            self.scheduler.step(val_f)
        else:
            self.scheduler.step()
        state["elapsed"] += clock() - t0
        state["epoch"] = epoch + 1
        if val_f < state["best_val"]:
            state.update(best_val=val_f, best_epoch=epoch + 1, bad_epochs=0)
            state["best_state"] = {k: v.clone() for k, v in eval_model.state_dict().items()}
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
        if vm["stress_mae_meV_per_A3"] is not None:
            row["val_stress_mae_meV_per_A3"] = vm["stress_mae_meV_per_A3"]
        state["history"].append(row)
        return row

    def _predict(
        self, model: nn.Module, data: PackedStructures, progress: bool = False
    ) -> dict[str, np.ndarray]:
        """Predictions on `data`, its batches shared out over the ranks; every rank gets them all."""
        pred = predict_share(
            model,
            data,
            self.cfg.eval_batch_size,
            progress=progress and self.rank == 0,
            dtype=self.dtype,
            rank=self.rank,
            world=self.world,
        )
        if self.world > 1:
            keys = ("energy_pred", "forces_pred", "forces_ref", "stress_pred")
            for k, v in zip(keys, sum_arrays([pred[k] for k in keys], self.device)):
                pred[k] = v
        return pred

    def _finish(self) -> dict[str, Any]:
        """Final evaluation of the best weights, then the callbacks' on_fit_end; the summary."""
        state = self.state
        lr_now = float(self.optimizer.param_groups[0]["lr"])
        reason = self._stop or "epochs"
        summary: dict[str, Any] = {
            "stop_reason": reason,
            "epochs": state["epoch"],
            "best_epoch": state["best_epoch"],
            "train_time_s": state["elapsed"],
            "n_train": int(len(self.data.train_idx)),
            "n_val": len(self.data.val),
            "world_size": self.world,
            "final_lr": lr_now,
            "warnings": [],
        }
        self.log.info(
            f"training stopped ({reason}) after epoch {state['epoch']}; best epoch "
            f"{state['best_epoch']}, lr {lr_now:.3g}"
        )
        final = self.evaluation_model()
        if state["best_state"] is not None:
            final.load_state_dict(state["best_state"])
        pred = self._predict(final, self.data.val)
        summary["val"] = metrics_from_predictions(pred)
        label = "validation"
        if self.data.test is not None:
            pred = self._predict(final, self.data.test, progress=self.progress)
            summary["test"] = metrics_from_predictions(pred)
            label = "test"
        self.final_model = final
        self.final_predictions = (pred, label)
        self._call("on_fit_end", summary)
        barrier(self.world)
        return summary


def default_callbacks(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    extra: Sequence[Callback] = (),
) -> list[Callback]:
    """The callbacks of `mlsim train`, with `extra` after the ones that train and before the export.

    So an extra callback's on_epoch_end runs before the checkpoint is written (its state is saved
    with that epoch), and what its on_fit_end adds to the summary reaches model.pt and summary.json.
    """
    first: list[Callback] = [MovingAverage(cfg.ema_decay)] if cfg.ema_decay > 0 else []
    first.append(StopCriteria())
    last: list[Callback] = [Checkpoint(resume), EpochLog(), ProgressBar(progress), ExportModel()]
    if cfg.plots:
        last.append(Plots())
    last.append(WriteSummary())
    return [*first, *extra, *last]


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train per `cfg`; returns a summary dict (also written to OUTPUT/summary.json).

    `callbacks` add to the default ones (see mlsim.train.Callback for the hooks), e.g. to record
    every epoch's validation error, or to end a batch job resumably before its time limit::

        class Deadline(Callback):
            def __init__(self, deadline: float) -> None:
                self.deadline = deadline  # time.time() at which the job will be killed

            def on_epoch_end(self, trainer, row):
                print(row["epoch"], row["val_force_mae_meV_per_A"])
                if time.time() > self.deadline - 600:
                    trainer.interrupt()  # checkpoint kept; continue with resume=True

        train(load_config("train.yaml"), callbacks=[Deadline(start + 4 * 3600)])

    `stop_after_epochs` ends this process after that many epochs *of this call* without the final
    model/plots, as if interrupted: used to test that --resume continues bit-for-bit.
    """
    extra = list(callbacks)
    if stop_after_epochs is not None:
        extra.append(InterruptAfter(stop_after_epochs))
    trainer = Trainer(cfg, default_callbacks(cfg, resume, progress, extra), progress=progress)
    return trainer.fit()
