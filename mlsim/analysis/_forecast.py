"""Forecasting the next conformational state: an LSTM over a window of observables vs an MSM.

Both models answer the same question on the same held-out frames: given the trajectory up to frame
t, what is the probability of each state at frame t + h? The LSTM sees a window of W observables
(e.g. sin/cos of phi/psi); the MSM sees only the current microstate and propagates it by its
transition matrix at lag h, then maps microstates to states with memberships counted on the
training data. A persistence baseline ("the state does not change") is reported alongside, since
at short horizons it is hard to beat and any model worth using must.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlsim.analysis._kinetics import microstate_membership
from mlsim.analysis._minibatch import check_class_inputs, fit_cross_entropy

__all__ = [
    "ForecastScores",
    "LSTMForecaster",
    "compare_forecasts",
    "make_windows",
    "microstate_membership",
    "score_probabilities",
    "train_lstm_forecaster",
]

_EPS = 1e-6  # probability floor for log-loss, so one confident miss does not give infinity


def make_windows(
    series: Sequence[np.ndarray], labels: Sequence[np.ndarray], window: int, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sliding windows per trajectory: X (N, W, D), target y (N,), traj id (N,), frame t (N,).

    Window n covers frames t-W+1..t of one trajectory and its target is the label at t + horizon;
    windows never straddle two trajectories.
    """
    if window < 1 or horizon < 1:
        raise ValueError(f"window and horizon must be >= 1, got {window}, {horizon}")
    xs, ys, ids, ts = [], [], [], []
    for i, (s, lab) in enumerate(zip(series, labels)):
        s = np.asarray(s, dtype=np.float64)
        if s.ndim == 1:
            s = s[:, None]
        if len(s) != len(lab):
            raise ValueError(f"trajectory {i}: {len(s)} frames of observables, {len(lab)} labels")
        t = np.arange(window - 1, len(s) - horizon)
        if t.size == 0:
            continue
        xs.append(np.lib.stride_tricks.sliding_window_view(s, window, axis=0)[t - window + 1])
        ys.append(np.asarray(lab)[t + horizon])
        ids.append(np.full(t.size, i))
        ts.append(t)
    if not xs:
        raise ValueError(f"no trajectory is longer than window + horizon ({window} + {horizon})")
    # sliding_window_view puts the window axis last: (N, D, W) -> (N, W, D)
    return (
        np.concatenate(xs).transpose(0, 2, 1).copy(),
        np.concatenate(ys).astype(np.int64),
        np.concatenate(ids),
        np.concatenate(ts),
    )


@dataclass
class LSTMForecaster:
    """LSTM + linear head giving state logits at t + horizon from a window ending at t."""

    module: object  # torch.nn.Module: (N, W, D) -> (N, C)
    window: int
    horizon: int

    def predict_proba(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """State probabilities (N, C) for windows x (N, W, D)."""
        import torch

        out = []
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                xb = torch.as_tensor(np.asarray(x[s : s + batch_size], dtype=np.float32))
                out.append(torch.softmax(self.module(xb), dim=1).numpy())
        return np.concatenate(out).astype(np.float64)


def _lstm_module(n_in: int, n_out: int, hidden: int):
    """Single-layer LSTM reading the window; the last hidden state feeds a linear head."""
    import torch

    class Net(torch.nn.Module):
        """LSTM classifier over a window."""

        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(n_in, hidden, batch_first=True)
            self.head = torch.nn.Linear(hidden, n_out)

        def forward(self, x):
            """Logits (N, n_out) from windows (N, W, n_in)."""
            h, _ = self.lstm(x)
            return self.head(h[:, -1])

    return Net()


def train_lstm_forecaster(
    x: np.ndarray,
    y: np.ndarray,
    n_states: int,
    window: int,
    horizon: int,
    hidden: int = 32,
    n_epochs: int = 15,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> LSTMForecaster:
    """Train the LSTM forecaster with cross-entropy on windows x (N, W, D) and targets y (N,)."""
    import torch

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 3 or len(x) != len(y):
        raise ValueError(f"need windows (N, W, D) and N targets, got {x.shape} and {y.shape}")
    check_class_inputs(x, y, n_states, "forecaster inputs", "targets")
    torch.manual_seed(seed)
    net = _lstm_module(x.shape[2], n_states, hidden)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    fit_cross_entropy(
        net, torch.nn.CrossEntropyLoss(), tx, ty, n_epochs, batch_size, learning_rate, seed
    )
    return LSTMForecaster(net, window, horizon)


@dataclass
class ForecastScores:
    """Accuracy (most probable state) and mean log-loss (nats) of a probabilistic forecast."""

    accuracy: float
    log_loss: float

    @property
    def error(self) -> float:
        """Misclassification rate, 1 - accuracy."""
        return 1.0 - self.accuracy


def score_probabilities(p: np.ndarray, y: np.ndarray) -> ForecastScores:
    """Score forecast probabilities p (N, C) against true states y (N,)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    acc = float(np.mean(p.argmax(1) == y))
    ll = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))))
    return ForecastScores(acc, ll)


def compare_forecasts(
    train_series: Sequence[np.ndarray],
    train_labels: Sequence[np.ndarray],
    train_dtrajs: Sequence[np.ndarray],
    test_series: Sequence[np.ndarray],
    test_labels: Sequence[np.ndarray],
    test_dtrajs: Sequence[np.ndarray],
    n_states: int,
    n_micro: int,
    window: int = 16,
    horizon: int = 1,
    seed: int = 0,
    n_epochs: int = 15,
) -> dict[str, object]:
    """Train LSTM and MSM on training trajectories; score both (and persistence) on held-out ones."""
    from mlsim.analysis._kinetics import estimate_msm

    x_tr, y_tr, _, _ = make_windows(train_series, train_labels, window, horizon)
    x_te, y_te, id_te, t_te = make_windows(test_series, test_labels, window, horizon)
    lstm = train_lstm_forecaster(
        x_tr, y_tr, n_states, window, horizon, n_epochs=n_epochs, seed=seed
    )
    p_lstm = lstm.predict_proba(x_te)

    msm = estimate_msm(train_dtrajs, horizon, n_micro)
    member = microstate_membership(train_dtrajs, train_labels, n_micro, n_states)
    prop = msm.transition_full @ member  # (n_micro, n_states): P(state at t+h | micro at t)
    s_now = np.array([test_dtrajs[i][t] for i, t in zip(id_te, t_te)])
    p_msm = prop[s_now]

    lab_now = np.array([test_labels[i][t] for i, t in zip(id_te, t_te)])
    # Persistence: the current state with probability 1 - eps; the floor keeps log-loss finite.
    p_pers = np.full((len(lab_now), n_states), _EPS)
    p_pers[np.arange(len(lab_now)), lab_now] = 1.0 - _EPS * (n_states - 1)

    out: dict[str, object] = {"window": window, "horizon_frames": horizon}
    for name, p in (("lstm", p_lstm), ("msm", p_msm), ("persistence", p_pers)):
        s = score_probabilities(p, y_te)
        out[name] = {"accuracy": s.accuracy, "error": s.error, "log_loss": s.log_loss}
    out["n_test_windows"] = int(len(y_te))
    return out
