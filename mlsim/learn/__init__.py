"""Active learning (`mlsim learn`): explore with a committee, label what it doubts, retrain."""

from mlsim.learn._config import LearnConfig, load_learn_config
from mlsim.learn._loop import labelled_dataset, learn

__all__ = ["LearnConfig", "labelled_dataset", "learn", "load_learn_config"]
