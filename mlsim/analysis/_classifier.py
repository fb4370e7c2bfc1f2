"""A neural classifier of conformational states from invariant features (e.g. heavy-atom distances).

Inputs are standardised with training-set statistics inside the model, so attributions and
predictions work on raw features in their physical units (Angstrom). Accuracy is always measured on
whole held-out trajectories: frames of one trajectory are strongly correlated, so a random frame
split would leak neighbouring frames into the test set and overstate accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mlsim.analysis._minibatch import check_class_inputs, fit_cross_entropy

__all__ = ["StateClassifier", "split_by_trajectory", "train_state_classifier"]


def split_by_trajectory(
    n_trajectories: int, test_fraction: float = 0.25, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split trajectory indices into (train, test), at least one of each; needs >= 2 trajectories."""
    if n_trajectories < 2:
        raise ValueError("a held-out split by trajectory needs at least two trajectories")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n_trajectories)
    n_test = min(max(1, round(test_fraction * n_trajectories)), n_trajectories - 1)
    return sorted(order[n_test:].tolist()), sorted(order[:n_test].tolist())


def _scaling(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale for standardisation.

    Features whose spread is below float32 resolution relative to their size (e.g. a constrained
    bond) carry no information; dividing by their tiny std would blow rounding noise up into large
    inputs, so they get scale 1 instead.
    """
    mean, std = x.mean(0), x.std(0)
    scale = np.where(std > 1e-5 * (np.abs(mean) + 1e-8), std, 1.0)
    return mean, scale


def _mlp(n_in: int, n_out: int, hidden: int, depth: int):
    """MLP with smooth (SiLU) activations, so integrated gradients see a smooth path."""
    import torch

    layers: list = []
    width = n_in
    for _ in range(depth):
        layers += [torch.nn.Linear(width, hidden), torch.nn.SiLU()]
        width = hidden
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


def _standardised(net, mean: np.ndarray, scale: np.ndarray):
    """Wrap ``net`` so it takes raw features: logits = net((x - mean) / scale)."""
    import torch

    class Standardised(torch.nn.Module):
        """Standardise with training statistics, then apply the network."""

        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

        def forward(self, x):
            """Logits for raw features x (N, n_features)."""
            return self.net((x - self.mean) / self.scale)

    return Standardised()


@dataclass
class StateClassifier:
    """Trained classifier: a torch module mapping raw features (N, F) to state logits (N, C)."""

    module: object  # torch.nn.Module on raw features
    feature_names: list[str]
    state_names: list[str]
    train_mean: np.ndarray  # (F,) mean training feature, the natural attribution baseline
    history: list[float] = field(default_factory=list)  # training loss per epoch

    def logits(self, x: np.ndarray) -> np.ndarray:
        """State logits for raw features x (N, F)."""
        import torch

        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"features must be (N, {len(self.feature_names)}), got {x.shape}")
        with torch.no_grad():
            return self.module(torch.from_numpy(x)).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Most probable state index for each frame."""
        return self.logits(x).argmax(axis=1)

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of frames classified correctly."""
        labels = np.asarray(labels)
        if len(labels) != len(x):
            raise ValueError(f"{len(x)} frames but {len(labels)} labels")
        return float(np.mean(self.predict(x) == labels))


def train_state_classifier(
    features: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    feature_names: Sequence[str],
    state_names: Sequence[str],
    hidden: int = 64,
    depth: int = 2,
    n_epochs: int = 60,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> StateClassifier:
    """Train an MLP classifier (cross-entropy, Adam) on per-trajectory features and labels.

    States absent from training still get an output (never predicted much), so the class count is
    fixed by ``state_names``; rare states are up-weighted (inverse sqrt frequency) so that a
    sparsely visited basin is not ignored.
    """
    import torch

    xs = [np.asarray(x, dtype=np.float64) for x in features]
    ys = [np.asarray(y, dtype=np.int64) for y in labels]
    if len(xs) != len(ys) or any(len(x) != len(y) for x, y in zip(xs, ys)):
        raise ValueError("features and labels must have the same trajectories and frame counts")
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    n_states = len(state_names)
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise ValueError(f"features must be (N, {len(feature_names)}), got {x.shape}")
    check_class_inputs(x, y, n_states, "classifier features", "labels")
    torch.manual_seed(seed)
    mean, scale = _scaling(x)
    module = _standardised(_mlp(x.shape[1], n_states, hidden, depth), mean, scale)
    counts = np.bincount(y, minlength=n_states).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0)
    w = w / w[counts > 0].mean()
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.as_tensor(w, dtype=torch.float32))
    tx = torch.from_numpy(x.astype(np.float32))
    ty = torch.from_numpy(y)
    history = fit_cross_entropy(module, loss_fn, tx, ty, n_epochs, batch_size, learning_rate, seed)
    return StateClassifier(module, list(feature_names), list(state_names), mean, history)
