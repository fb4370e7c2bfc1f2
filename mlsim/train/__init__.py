"""Training of mlsim potentials on energies and forces (`mlsim train`) and their evaluation."""

from mlsim.train._batching import Batch, TensorData, collate
from mlsim.train._config import TrainConfig, config_reference, load_config
from mlsim.train._evaluate import evaluate, metrics_from_predictions, predict
from mlsim.train._trainer import (
    CheckpointError,
    OutputWriteError,
    read_structures,
    split_indices,
    train,
)

__all__ = [
    "Batch",
    "CheckpointError",
    "OutputWriteError",
    "TensorData",
    "TrainConfig",
    "collate",
    "config_reference",
    "evaluate",
    "load_config",
    "metrics_from_predictions",
    "predict",
    "read_structures",
    "split_indices",
    "train",
]
