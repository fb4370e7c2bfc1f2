"""VAMPnet: a neural network trained (with deeptime's VAMPNet estimator) to maximise the VAMP-2 score.

The lobe ends in a softmax, so its outputs are fuzzy memberships of ``n_states`` metastable states,
the classic VAMPnet construction. The VAMP-2 score on held-out trajectories is reported next to
that of TICA with the same output dimension, which is the fair linear baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["VAMPNetResult", "train_vampnet", "vamp2_score"]


def vamp2_score(x: np.ndarray, y: np.ndarray, epsilon: float = 1e-6) -> float:
    """VAMP-2 score (including the constant function) of instantaneous x and time-lagged y."""
    import torch
    from deeptime.decomposition.deep import vamp_score

    tx = torch.as_tensor(np.asarray(x, dtype=np.float64))
    ty = torch.as_tensor(np.asarray(y, dtype=np.float64))
    return float(vamp_score(tx, ty, method="VAMP2", epsilon=epsilon, mode="regularize"))


@dataclass
class VAMPNetResult:
    """Trained VAMPnet lobe with its feature scaling and train/validation VAMP-2 scores."""

    model: object  # deeptime VAMPNetModel
    mean: np.ndarray
    scale: np.ndarray
    train_score: float
    validation_score: float

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Soft state memberships (T, n_states) for features x (T, n_features)."""
        z = (np.asarray(x, dtype=np.float32) - self.mean) / self.scale
        return np.asarray(self.model.transform(z.astype(np.float32)))


def _pairs(trajs: Sequence[np.ndarray], lagtime: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack (x_t, x_{t+lag}) pairs of all trajectories long enough for the lag."""
    xs = [t[:-lagtime] for t in trajs if len(t) > lagtime]
    ys = [t[lagtime:] for t in trajs if len(t) > lagtime]
    if not xs:
        raise ValueError(f"no trajectory is longer than the VAMPnet lag time ({lagtime} frames)")
    return np.concatenate(xs), np.concatenate(ys)


def train_vampnet(
    train: Sequence[np.ndarray],
    validation: Sequence[np.ndarray],
    lagtime: int,
    n_states: int = 4,
    hidden: int = 32,
    n_epochs: int = 20,
    batch_size: int = 256,
    learning_rate: float = 1e-2,
    seed: int = 0,
) -> VAMPNetResult:
    """Train a softmax VAMPnet on lists of (T_i, n_features) arrays; score on held-out trajectories."""
    import torch
    from deeptime.decomposition.deep import VAMPNet
    from torch.utils.data import DataLoader, TensorDataset

    from mlsim.analysis._classifier import _scaling

    if n_states < 2:
        raise ValueError(f"VAMPnet needs n_states >= 2, got {n_states}")
    train = [np.asarray(t, dtype=np.float64) for t in train]
    validation = [np.asarray(t, dtype=np.float64) for t in validation]
    allx = np.concatenate(train)
    if not np.all(np.isfinite(allx)):
        raise ValueError("VAMPnet features contain NaN or inf")
    mean, scale = _scaling(allx)

    def prep(ts: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _pairs([(t - mean) / scale for t in ts], lagtime)
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))

    torch.manual_seed(seed)
    x0, xt = prep(train)
    v0, vt = prep(validation)
    n_in = allx.shape[1]
    lobe = torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden),
        torch.nn.ELU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ELU(),
        torch.nn.Linear(hidden, n_states),
        torch.nn.Softmax(dim=1),
    )
    est = VAMPNet(lobe=lobe, learning_rate=learning_rate, score_method="VAMP2", dtype=np.float32)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TensorDataset(x0, xt), batch_size=batch_size, shuffle=True, drop_last=True, generator=gen
    )
    if len(loader) == 0:  # fewer pairs than one batch: train full-batch
        loader = DataLoader(TensorDataset(x0, xt), batch_size=len(x0))
    est.fit(loader, n_epochs=n_epochs)
    model = est.fetch_model()
    res = VAMPNetResult(model, mean.astype(np.float32), scale.astype(np.float32), 0.0, 0.0)
    with torch.no_grad():
        res.train_score = vamp2_score(
            model.transform(x0.numpy()), model.transform(xt.numpy(), instantaneous=False)
        )
        res.validation_score = vamp2_score(
            model.transform(v0.numpy()), model.transform(vt.numpy(), instantaneous=False)
        )
    return res
