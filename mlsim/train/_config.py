"""Training configuration: a YAML file, validated into a dataclass with documented defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "load_config"]


@dataclass
class TrainConfig:
    """Everything `mlsim train` needs; paths are resolved relative to the YAML file."""

    data: str  # training pool (any format mlsim.data reads); split into train/val below
    output: str = "run"  # folder for checkpoint.pt, log.csv, model.pt, plots
    test_data: str | None = None  # optional held-out file, evaluated once at the end
    seed: int = 0
    n_train: int | None = None  # None: everything not in validation
    val_fraction: float = 0.1
    n_val: int | None = None  # overrides val_fraction
    val_data: str | None = None  # separate validation file: then the whole pool trains
    model: dict[str, Any] = field(default_factory=lambda: {"architecture": "ani"})
    ensemble: int = 1  # members trained side by side from different initial weights
    energy_weight: float = 1.0  # weight of mean (dE per atom)^2, eV^2
    forces_weight: float = 10.0  # weight of mean (dF component)^2, (eV/A)^2
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "plateau"  # "plateau" (on val force MAE) or "cosine" (over `epochs`)
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    min_lr: float = 1e-5
    ema_decay: float = 0.99  # 0 disables the exponential moving average of weights
    batch_size: int = 32  # global batch (split over ranks under torchrun)
    eval_batch_size: int = 128
    epochs: int = 100
    time_budget_min: float | None = None  # stop (and finish normally) after this much training
    early_stopping_patience: int = 50  # epochs without val force MAE improvement
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    dtype: str = "float32"
    device: str = "cpu"  # "cuda" trains on the GPU (cuda:LOCAL_RANK under torchrun, nccl)
    grad_clip: float = 10.0
    plots: bool = True
    base_dir: str = "."  # set by load_config: the YAML file's folder

    def path(self, p: str) -> Path:
        """Resolve a path from the config relative to the config file."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q

    def validate(self) -> None:
        """Raise ValueError for inconsistent settings."""
        if self.schedule not in ("plateau", "cosine"):
            raise ValueError(f"schedule must be 'plateau' or 'cosine', not {self.schedule!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, not {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', not {self.device!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.ensemble < 1:
            raise ValueError("batch_size, epochs and ensemble must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1)")
        if self.val_data and self.n_val is not None:
            raise ValueError("set either val_data (a validation file) or n_val (a split), not both")
        if not 0.0 < self.val_fraction < 1.0 and self.n_val is None:
            raise ValueError("val_fraction must be in (0, 1)")
        if (
            self.energy_weight < 0
            or self.forces_weight < 0
            or self.energy_weight + self.forces_weight == 0
        ):
            raise ValueError("loss weights must be >= 0 and not both zero")
        if "architecture" not in self.model:
            raise ValueError("model.architecture is required (ani or painn)")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config; unknown keys are an error (they are usually typos)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the config must be a mapping of keys to values")
    raw.update(overrides or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(
            f"{path}: unknown config keys {unknown}; valid keys: {sorted(names - {'base_dir'})}"
        )
    if "data" not in raw:
        raise ValueError(f"{path}: 'data' (the training data file) is required")
    raw.setdefault("base_dir", str(path.resolve().parent))
    cfg = TrainConfig(**raw)
    cfg.validate()
    return cfg
