"""Training of mlsim potentials on energies and forces (`mlsim train`) and their evaluation.

train(cfg) runs a Trainer with the default callbacks (moving average, checkpoint, log.csv,
progress bar, early stopping and time budget, model.pt, plots, summary.json); subclasses of
Callback passed to train() add to them (docs/training.md).
"""

from mlsim.train._batching import Batch, TensorData, collate
from mlsim.train._callbacks import Callback
from mlsim.train._checkpoint import CheckpointError
from mlsim.train._config import TrainConfig, config_reference, load_config
from mlsim.train._data import read_structures, split_indices
from mlsim.train._evaluate import evaluate, metrics_from_predictions, predict
from mlsim.train._outputs import OutputWriteError
from mlsim.train._trainer import Trainer, default_callbacks, train

__all__ = [
    "Batch",
    "Callback",
    "CheckpointError",
    "OutputWriteError",
    "TensorData",
    "TrainConfig",
    "Trainer",
    "collate",
    "config_reference",
    "default_callbacks",
    "evaluate",
    "load_config",
    "metrics_from_predictions",
    "predict",
    "read_structures",
    "split_indices",
    "train",
]
