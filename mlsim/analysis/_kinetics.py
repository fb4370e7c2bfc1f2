"""Slow modes and Markov state models: thin, validated wrappers around deeptime's estimators.

TICA, k-means, maximum-likelihood MSMs, implied timescales, the Chapman-Kolmogorov test and PCCA+
are deeptime's; what is added here is input checking, the bookkeeping between the MSM's connected
set and the full microstate space, and uncertainty estimates of populations by resampling whole
trajectories (frames within a trajectory are correlated, so resampling frames would understate
the error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ChapmanKolmogorov",
    "MSMResult",
    "bootstrap_msm",
    "bootstrap_observable_populations",
    "chapman_kolmogorov",
    "estimate_msm",
    "implied_timescales",
    "kmeans_microstates",
    "microstate_membership",
    "observable_populations",
    "tica_projection",
]


def _as_list(data: np.ndarray | Sequence[np.ndarray], ndim: int) -> list[np.ndarray]:
    """Return a list of arrays of the given ndim, checking shapes and finiteness."""
    if isinstance(data, np.ndarray):
        data = [data]
    out = [np.asarray(x) for x in data]
    if not out:
        raise ValueError("no trajectories given")
    for x in out:
        if x.ndim != ndim:
            raise ValueError(f"expected {ndim}-d arrays per trajectory, got shape {x.shape}")
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise ValueError("input contains NaN or inf")
    return out


def tica_projection(
    features: Sequence[np.ndarray], lagtime: int, dim: int | None = None
) -> tuple[object, list[np.ndarray]]:
    """Fit TICA (deeptime, kinetic-map scaling) at ``lagtime`` frames and project every trajectory.

    Returns (deeptime CovarianceKoopmanModel, list of (T_i, dim) projections).
    """
    from deeptime.decomposition import TICA

    feats = [x.astype(np.float64) for x in _as_list(features, 2)]
    if lagtime < 1:
        raise ValueError(f"TICA lag time must be >= 1 frame, got {lagtime}")
    if all(len(x) <= lagtime for x in feats):
        raise ValueError(f"every trajectory is shorter than the TICA lag time ({lagtime} frames)")
    usable = [x for x in feats if len(x) > lagtime]
    model = TICA(lagtime=lagtime, dim=dim, scaling="kinetic_map").fit(usable).fetch_model()
    return model, [model.transform(x) for x in feats]


def kmeans_microstates(
    data: Sequence[np.ndarray], n_clusters: int, seed: int = 0, max_iter: int = 200
) -> tuple[object, list[np.ndarray]]:
    """Cluster frames with deeptime's k-means (k-means++ init, fixed seed); return (model, dtrajs)."""
    from deeptime.clustering import KMeans

    xs = [np.ascontiguousarray(x, dtype=np.float64) for x in _as_list(data, 2)]
    n_frames = sum(len(x) for x in xs)
    if not 1 <= n_clusters <= n_frames:
        raise ValueError(f"n_clusters={n_clusters} must be in [1, {n_frames} frames]")
    est = KMeans(
        n_clusters=n_clusters, max_iter=max_iter, init_strategy="kmeans++", fixed_seed=int(seed)
    )
    model = est.fit(np.concatenate(xs)).fetch_model()
    return model, [model.transform(x).astype(np.int32) for x in xs]


@dataclass
class MSMResult:
    """A maximum-likelihood MSM plus the map from its connected set to the full microstate space."""

    msm: object  # deeptime MarkovStateModel on the largest connected set
    lagtime: int  # frames
    n_microstates: int  # size of the full microstate space
    active: np.ndarray  # (n_active,) full-space ids of the MSM's states

    @property
    def stationary_full(self) -> np.ndarray:
        """Stationary distribution over all microstates (0 outside the connected set)."""
        pi = np.zeros(self.n_microstates)
        pi[self.active] = self.msm.stationary_distribution
        return pi

    @property
    def transition_full(self) -> np.ndarray:
        """Transition matrix over all microstates; states outside the connected set stay put."""
        t = np.eye(self.n_microstates)
        t[np.ix_(self.active, self.active)] = self.msm.transition_matrix
        return t

    def timescales(self, k: int | None = None) -> np.ndarray:
        """Implied timescales in frames."""
        return np.real(np.asarray(self.msm.timescales(k)))


def _check_dtrajs(dtrajs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate discrete trajectories (non-negative ints) and return them as int32 arrays."""
    out = _as_list(dtrajs, 1)
    for d in out:
        if d.dtype.kind not in "iu":
            raise ValueError(f"discrete trajectories must be integer arrays, got {d.dtype}")
        if d.size and d.min() < 0:
            raise ValueError("discrete trajectories contain negative state ids")
    return [d.astype(np.int32) for d in out]


def estimate_msm(
    dtrajs: Sequence[np.ndarray], lagtime: int, n_microstates: int | None = None
) -> MSMResult:
    """Reversible maximum-likelihood MSM (deeptime) on the largest connected set at ``lagtime``."""
    from deeptime.markov import TransitionCountEstimator
    from deeptime.markov.msm import MaximumLikelihoodMSM

    dt = _check_dtrajs(dtrajs)
    if lagtime < 1:
        raise ValueError(f"MSM lag time must be >= 1 frame, got {lagtime}")
    if all(len(d) <= lagtime for d in dt):
        raise ValueError(f"every trajectory is shorter than the MSM lag time ({lagtime} frames)")
    n = int(max(d.max() for d in dt if d.size)) + 1 if n_microstates is None else n_microstates
    counts = (
        TransitionCountEstimator(lagtime=lagtime, count_mode="sliding", n_states=n)
        .fit(dt)
        .fetch_model()
        .submodel_largest(directed=True)
    )
    if counts.n_states < 2:
        raise ValueError(
            f"largest connected set at lag {lagtime} has {counts.n_states} state(s); "
            "trajectories are too short or the lag time too long"
        )
    msm = MaximumLikelihoodMSM(reversible=True).fit_from_counts(counts).fetch_model()
    return MSMResult(msm, lagtime, n, np.asarray(counts.state_symbols, dtype=np.int64))


def implied_timescales(
    dtrajs: Sequence[np.ndarray], lagtimes: Sequence[int], n_its: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Implied timescales (frames) of MSMs at each lag; returns (lagtimes, its (n_lags, n_its)).

    Processes an MSM cannot resolve (too few states) are NaN.
    """
    from deeptime.util.validation import implied_timescales as dt_its

    dt = _check_dtrajs(dtrajs)
    n = int(max(d.max() for d in dt if d.size)) + 1
    models = [estimate_msm(dt, int(tau), n).msm for tau in lagtimes]
    its = dt_its(models, n_its=n_its)
    out = np.full((its.n_lagtimes, n_its), np.nan)
    for p in range(min(n_its, its.max_n_processes)):
        out[:, p] = np.real(its.timescales_for_process(p))
    return np.asarray(its.lagtimes), out


@dataclass
class ChapmanKolmogorov:
    """CK test on PCCA+ sets: predicted vs estimated set-to-set probabilities at multiples of tau."""

    lagtimes: np.ndarray  # (n_lags,) frames, starting at 0
    predictions: np.ndarray  # (n_lags, n_sets, n_sets)
    estimates: np.ndarray  # (n_lags, n_sets, n_sets)

    @property
    def max_deviation(self) -> float:
        """Largest |prediction - estimate| over all lags and set pairs."""
        return float(np.max(np.abs(self.predictions - self.estimates)))


def chapman_kolmogorov(
    dtrajs: Sequence[np.ndarray], lagtime: int, n_sets: int, multiples: Sequence[int] = (2, 3, 4, 5)
) -> ChapmanKolmogorov:
    """Chapman-Kolmogorov test (deeptime) of the MSM at ``lagtime`` on ``n_sets`` PCCA+ sets.

    Models at k*lagtime are estimated on the same connected microstates as the test model.
    """
    dt = _check_dtrajs(dtrajs)
    base = estimate_msm(dt, lagtime)
    # Restrict every trajectory to the base model's connected set so all models share states.
    remap = np.full(base.n_microstates, -1, dtype=np.int32)
    remap[base.active] = np.arange(len(base.active), dtype=np.int32)
    pieces = []
    for d in dt:
        r = remap[np.minimum(d, base.n_microstates - 1)]
        # Split at frames outside the connected set so no transition is counted across them.
        for seg in np.split(r, np.flatnonzero(r < 0)):
            seg = seg[seg >= 0]
            if len(seg) > 1:
                pieces.append(seg)
    n_act = len(base.active)
    models = []
    for k in multiples:
        tau = lagtime * int(k)
        if all(len(p) <= tau for p in pieces):
            break
        models.append(_msm_on_states(pieces, tau, n_act))
    if not models:
        raise ValueError("trajectories too short for any Chapman-Kolmogorov lag time")
    if not 2 <= n_sets <= n_act:
        raise ValueError(f"n_sets={n_sets} must be in [2, {n_act} connected microstates]")
    test = _msm_on_states(pieces, lagtime, n_act)
    ck = test.ck_test([test, *models], n_metastable_sets=n_sets)
    return ChapmanKolmogorov(
        np.asarray(ck.lagtimes), np.real(ck.predictions), np.real(ck.estimates)
    )


def _msm_on_states(pieces: list[np.ndarray], tau: int, n: int):
    """Reversible MLE MSM over all n states; unvisited states get a tiny self-count prior."""
    from deeptime.markov import TransitionCountEstimator, TransitionCountModel
    from deeptime.markov.msm import MaximumLikelihoodMSM

    counts = TransitionCountEstimator(lagtime=tau, count_mode="sliding", n_states=n).fit(pieces)
    c = counts.fetch_model().count_matrix.astype(np.float64)
    # A small symmetric pseudo-count keeps the state space fixed and connected at long lags,
    # which the CK comparison needs; 1e-3 counts is negligible against real transition counts.
    c = c + 1e-3 * (c + c.T > 0) + 1e-3 * np.eye(n)
    cm = TransitionCountModel(c, counting_mode="sliding", lagtime=tau)
    return MaximumLikelihoodMSM(reversible=True).fit_from_counts(cm).fetch_model()


def microstate_membership(
    dtrajs: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_micro: int, n_states: int
) -> np.ndarray:
    """(n_micro, n_states) fraction of each microstate's frames carrying each label.

    Microstates without frames get a uniform row (they have no stationary weight in an MSM fitted to
    the same data, so this never biases populations).
    """
    c = np.zeros((n_micro, n_states))
    for d, lab in zip(dtrajs, labels):
        np.add.at(c, (np.asarray(d), np.asarray(lab)), 1.0)
    c[c.sum(1) == 0] = 1.0
    return c / c.sum(1, keepdims=True)


def observable_populations(result: MSMResult, membership: np.ndarray) -> np.ndarray:
    """Stationary populations of macro-labels: pi (microstates) @ membership (n_micro, n_labels)."""
    m = np.asarray(membership, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != result.n_microstates:
        raise ValueError(
            f"membership must be ({result.n_microstates}, n_labels), got shape {m.shape}"
        )
    return result.stationary_full @ m


def bootstrap_msm(
    dtrajs: Sequence[np.ndarray],
    lagtime: int,
    membership: np.ndarray,
    n_samples: int = 50,
    seed: int = 0,
    n_its: int = 1,
    labels: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """MSM label populations (S, n_labels) and timescales (S, n_its, frames) over bootstrap samples.

    Each sample draws whole trajectories with replacement (frames within a trajectory are
    correlated, so resampling frames would understate the error); with a single trajectory its
    two halves are the resampling units. If per-frame ``labels`` are given, the microstate
    memberships are recounted in every sample too, so their uncertainty is included.
    """
    dt = _check_dtrajs(dtrajs)
    labs = None if labels is None else [np.asarray(x) for x in labels]
    if labs is not None and [len(x) for x in labs] != [len(d) for d in dt]:
        raise ValueError("labels must match the discrete trajectories frame for frame")
    if len(dt) == 1:
        half = len(dt[0]) // 2
        dt = [dt[0][:half], dt[0][half:]]
        if labs is not None:
            labs = [labs[0][:half], labs[0][half:]]
    n = membership.shape[0]
    rng = np.random.default_rng(seed)
    pops, its = [], []
    for _ in range(n_samples):
        pick = rng.integers(0, len(dt), size=len(dt))
        try:
            res = estimate_msm([dt[i] for i in pick], lagtime, n)
        except ValueError:
            continue  # a resample with no connected transitions carries no information
        m = membership
        if labs is not None:
            m = microstate_membership(
                [dt[i] for i in pick], [labs[i] for i in pick], n, membership.shape[1]
            )
        pops.append(observable_populations(res, m))
        ts = np.full(n_its, np.nan)
        got = res.timescales(n_its)[:n_its]
        ts[: len(got)] = got
        its.append(ts)
    if len(pops) < 2:
        raise ValueError("too few usable bootstrap samples; need more or longer trajectories")
    return np.asarray(pops), np.asarray(its)


def bootstrap_observable_populations(
    dtrajs: Sequence[np.ndarray],
    lagtime: int,
    membership: np.ndarray,
    n_samples: int = 50,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of MSM label populations over bootstrap samples of trajectories."""
    s, _ = bootstrap_msm(dtrajs, lagtime, membership, n_samples, seed)
    return s.mean(axis=0), s.std(axis=0, ddof=1)
