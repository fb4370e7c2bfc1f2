"""Training of mlsim potentials on energies and forces (`mlsim train`) and their evaluation.

train(cfg) runs a Trainer with the default callbacks (moving average, checkpoint, log.csv,
progress bar, early stopping and time budget, model.pt, plots, summary.json); subclasses of
Callback passed to train() add to them (docs/training.md).
"""

from mlsim.train._callbacks import Callback
from mlsim.train._config import TrainConfig, config_reference, load_config
from mlsim.train._evaluate import evaluate, predict
from mlsim.train._trainer import Trainer, default_callbacks, train

__all__ = [
    "Callback",
    "TrainConfig",
    "Trainer",
    "config_reference",
    "default_callbacks",
    "evaluate",
    "load_config",
    "predict",
    "train",
]
