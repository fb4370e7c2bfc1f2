"""End-to-end analysis of MD trajectories: features -> TICA -> microstates -> MSM -> states, models.

`analyze` is what `mlsim analyze` runs. It writes plots and a JSON summary to an output folder and
returns the summary. The alanine-dipeptide parts (phi/psi state labels, the distance classifier,
the state forecaster) run whenever the topology has exactly one phi and one psi dihedral.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlsim._fileio import write_json as _write_json

__all__ = ["AnalysisConfig", "analyze", "choose_lag", "write_json"]


@dataclass
class AnalysisConfig:
    """Settings of `analyze`; lag times are in frames (after striding)."""

    stride: int = 1
    # Time between the frames in the files (before stride), ps. None: read from the files
    # (mlsim's <trajectory>.json, an OpenMM DCD header, XTC frame times); an error if they can't.
    dt_ps: float | None = None
    tica_lag: int = 5
    tica_dim: int = 4
    n_clusters: int = 60
    its_lags: Sequence[int] = (1, 2, 5, 10, 20, 50)
    msm_lag: int | None = None  # None: chosen from the implied timescales (see choose_lag)
    n_its: int = 3
    n_metastable: int = 3
    n_bootstrap: int = 40
    test_fraction: float = 0.25
    classifier_epochs: int = 80
    lstm_window: int = 16
    lstm_epochs: int = 12
    vampnet_epochs: int = 15
    vampnet: bool = True
    seed: int = 0
    its_tolerance: float = 0.1  # relative change of the slowest ITS accepted as "converged"


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    """Write JSON atomically (mlsim._fileio)."""
    return _write_json(path, obj, indent=2, default=_json_default)


def _json_default(o):
    """Make numpy scalars/arrays JSON serialisable; non-finite floats become null."""
    if isinstance(o, np.ndarray):
        return [_json_default(v) for v in o.tolist()] if o.dtype.kind == "f" else o.tolist()
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating | float):
        return float(o) if np.isfinite(o) else None
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _clean(o):
    """Recursively replace NaN/inf by None so the JSON is strict."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, float | np.floating):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


def choose_lag(lagtimes: np.ndarray, slowest_its: np.ndarray, tolerance: float = 0.1) -> int:
    """Smallest lag whose slowest implied timescale changes by < tolerance up to the next lag.

    Falls back to the largest lag whose timescale is still resolved (ITS > lag).
    """
    lagtimes = np.asarray(lagtimes)
    its = np.asarray(slowest_its, dtype=np.float64)
    for k in range(len(lagtimes) - 1):
        a, b = its[k], its[k + 1]
        if np.isfinite(a) and np.isfinite(b) and a > lagtimes[k] and abs(b - a) < tolerance * a:
            return int(lagtimes[k])
    resolved = [int(t) for t, s in zip(lagtimes, its) if np.isfinite(s) and s > t]
    return resolved[-1] if resolved else int(lagtimes[0])


def _log(msg: str) -> None:
    """Progress line on stderr."""
    print(f"[analyze] {msg}", file=sys.stderr, flush=True)


def analyze(
    traj_paths: Sequence[str | os.PathLike],
    top: str | os.PathLike | None,
    outdir: str | os.PathLike,
    config: AnalysisConfig | None = None,
) -> dict:
    """Run the full analysis, write plots + summary.json into ``outdir``, return the summary."""
    from mlsim.analysis._features import load_trajectories
    from mlsim.analysis._timestep import resolve_frame_interval

    cfg = config or AnalysisConfig()
    trajs = load_trajectories(traj_paths, top, stride=cfg.stride)
    dt_ps, source, notes = resolve_frame_interval(traj_paths, trajs, cfg.dt_ps, cfg.stride)
    return analyze_trajectories(
        trajs, outdir, cfg, dt_ps, [str(p) for p in traj_paths], warnings=notes, dt_source=source
    )


def _warn(warnings: list[str], msg: str) -> None:
    """Record a warning for the summary and say it on stderr."""
    warnings.append(msg)
    _log(f"warning: {msg}")


def _timescale_warnings(
    msm, ts_frames: np.ndarray, lag: int, n_frames: list[int], dt_ps: float
) -> list[str]:
    """Warnings about the MSM at `lag`: negative/unresolved timescales, too little data."""
    out = []
    eig = np.real(np.asarray(msm.msm.eigenvalues(len(ts_frames) + 1)))[1:]
    for k, (t, lam) in enumerate(zip(ts_frames, eig)):
        if not np.isfinite(t):
            out.append(f"implied timescale {k + 1} at lag {lag} frames is not finite (unresolved)")
        elif t <= 0 or lam <= 0:
            out.append(
                f"implied timescale {k + 1} at lag {lag} frames comes from a negative eigenvalue "
                f"({lam:.3g}): it is not a relaxation time (unresolved; try a longer lag)"
            )
        elif t < lag:
            out.append(
                f"implied timescale {k + 1} ({t * dt_ps:.4g} ps) is shorter than the lag time "
                f"({lag * dt_ps:.4g} ps): the MSM does not resolve it"
            )
    short = [k for k, n in enumerate(n_frames) if n <= lag]
    if short:
        out.append(
            f"trajectories {short} have no more frames than the lag ({lag} frames) and add no "
            "transitions"
        )
    if sum(n_frames) < 100 * lag:
        out.append(
            f"too few frames for lag {lag}: {sum(n_frames)} frames are only "
            f"{sum(n_frames) / lag:.0f} lag times (fewer than 100), so the transition counts "
            "and timescales are poorly sampled"
        )
    return out


def analyze_trajectories(
    trajs: list,
    outdir: str | os.PathLike,
    cfg: AnalysisConfig,
    dt_ps: float,
    sources: list[str],
    warnings: Sequence[str] = (),
    dt_source: str = "given",
) -> dict:
    """`analyze` on already-loaded mdtraj trajectories whose (analysed) frames are dt_ps apart.

    Warnings (also printed on stderr) go to summary["warnings"]: lags too long for the data,
    negative or unresolved implied timescales, too few frames for the chosen lag.
    """
    from mlsim.analysis import _kinetics as kin
    from mlsim.analysis import _plots as plots
    from mlsim.analysis._features import dihedral_features, featurize, heavy_atom_distances

    t_start = time.perf_counter()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    # With one trajectory, its halves stand in for independent trajectories (held-out splits,
    # population consistency); say so in the summary.
    if len(trajs) == 1:
        half = trajs[0].n_frames // 2
        trajs = [trajs[0][:half], trajs[0][half:]]
        split_note = "single trajectory split into two halves"
    else:
        split_note = f"{len(trajs)} independent trajectories"
    n_frames = [t.n_frames for t in trajs]
    summary: dict = {
        "inputs": sources,
        "n_trajectories": len(trajs),
        "split": split_note,
        "frames_per_trajectory": n_frames,
        "dt_ps": dt_ps,
        "dt_source": dt_source,
        "total_time_ns": float(sum(n_frames) * dt_ps / 1000.0),
        "units": "times in ps (frames where named *_frames), distances in Angstrom",
        "config": _clean(asdict(cfg)),
    }
    warns: list[str] = []
    for w in warnings:
        _warn(warns, w)

    # --- features ---------------------------------------------------------------------------
    try:
        dih = [dihedral_features(t)[0] for t in trajs]
        kinds: tuple[str, ...] = ("dihedrals", "distances")
    except ValueError:
        dih = None
        kinds = ("distances",)
    feats, feat_names = zip(*[featurize(t, kinds) for t in trajs])
    feats = list(feats)
    summary["features"] = {"kinds": list(kinds), "n_features": len(feat_names[0])}
    _log(f"{len(trajs)} trajectories, {sum(n_frames)} frames, {len(feat_names[0])} features")

    # --- TICA + microstates -----------------------------------------------------------------
    if cfg.tica_lag >= min(n_frames):
        _warn(
            warns,
            f"TICA lag {cfg.tica_lag} frames is not shorter than the shortest trajectory "
            f"({min(n_frames)} frames)",
        )
    dim = min(cfg.tica_dim, feats[0].shape[1])
    tica, proj = kin.tica_projection(feats, cfg.tica_lag, dim=dim)
    summary["tica"] = {
        "lag_frames": cfg.tica_lag,
        "dim": dim,
        "timescales_ps": (np.asarray(tica.timescales(cfg.tica_lag))[:dim] * dt_ps).tolist(),
    }
    n_clusters = min(cfg.n_clusters, sum(n_frames) // 10)
    _, dtrajs = kin.kmeans_microstates(proj, max(2, n_clusters), seed=cfg.seed)
    n_micro = max(2, n_clusters)
    plots.plot_tica(proj, out / "tica.png")

    # --- implied timescales, MSM, CK test, PCCA+ ----------------------------------------------
    max_len = max(n_frames)
    lags = [int(t) for t in cfg.its_lags if t < max_len // 2] or [1]
    dropped = [int(t) for t in cfg.its_lags if int(t) not in lags]
    if dropped:
        _warn(
            warns,
            f"too few frames for lags {dropped} (frames): the longest trajectory has {max_len} "
            "frames and a lag must be below half of it; they were left out of the timescale scan",
        )
    lagtimes, its = kin.implied_timescales(dtrajs, lags, n_its=cfg.n_its)
    bad_scan = [int(t) for t, v in zip(lagtimes, its[:, 0]) if not (np.isfinite(v) and v > t)]
    if bad_scan:
        _warn(
            warns,
            f"the slowest implied timescale is negative or unresolved (NaN or below the lag) at "
            f"lags {bad_scan} (frames)",
        )
    lag = cfg.msm_lag or choose_lag(lagtimes, its[:, 0], cfg.its_tolerance)
    plots.plot_implied_timescales(lagtimes, its, out / "implied_timescales.png", dt_ps, "ps", lag)
    msm = kin.estimate_msm(dtrajs, lag, n_micro)
    ts_frames = msm.timescales(cfg.n_its)
    ts = ts_frames * dt_ps
    for w in _timescale_warnings(msm, ts_frames, lag, n_frames, dt_ps):
        _warn(warns, w)
    k_lag = int(np.searchsorted(lagtimes, lag))
    # Convergence: largest relative change of the slowest ITS from the chosen lag to longer lags
    # at which it is still resolved (ITS > lag); beyond that an ITS only tracks the lag itself.
    conv = None
    if k_lag < len(lagtimes) and lagtimes[k_lag] == lag:
        tail = [its[k, 0] for k in range(k_lag + 1, len(lagtimes)) if its[k, 0] > lagtimes[k]]
        if tail:
            conv = float(np.max(np.abs(np.asarray(tail) - its[k_lag, 0])) / its[k_lag, 0])
    summary["msm"] = {
        "lag_frames": lag,
        "lag_ps": lag * dt_ps,
        "n_microstates": n_micro,
        "n_connected": len(msm.active),
        "slowest_implied_timescale_ps": float(ts[0]) if len(ts) else None,
        "implied_timescales_ps": ts.tolist(),
        "its_lagtimes_ps": (lagtimes * dt_ps).tolist(),
        "its_vs_lag_ps": (its * dt_ps).tolist(),
        "slowest_its_max_relative_change_beyond_lag": conv,
    }
    n_sets = min(cfg.n_metastable, len(msm.active))
    if n_sets >= 2:
        pcca = msm.msm.pcca(n_sets)
        summary["msm"]["pcca_populations"] = np.asarray(
            pcca.coarse_grained_stationary_probability
        ).tolist()
        try:
            ck = kin.chapman_kolmogorov(dtrajs, lag, n_sets)
            plots.plot_ck_test(ck.lagtimes, ck.predictions, ck.estimates, out / "ck_test.png")
            summary["msm"]["ck_test_max_deviation"] = ck.max_deviation
            summary["msm"]["ck_test_lagtimes_frames"] = ck.lagtimes.tolist()
        except ValueError as exc:
            summary["msm"]["ck_test_error"] = str(exc)
    _log(
        f"MSM at lag {lag} frames: slowest ITS {summary['msm']['slowest_implied_timescale_ps']} ps"
    )

    # --- alanine dipeptide: phi/psi states and the models on them ------------------------------
    if dih is not None and dih[0].shape[1] == 4:
        summary.update(
            _alanine_section(
                trajs, dih, dtrajs, n_micro, lag, cfg, out, heavy_atom_distances, dt_ps
            )
        )
    elif dih is not None:
        summary["states"] = "skipped: phi/psi state labels are defined for alanine dipeptide only"

    # --- VAMPnet vs TICA on held-out trajectories ------------------------------------------
    if cfg.vampnet:
        summary["vampnet"] = _vampnet_section(feats, cfg, lag)

    summary["warnings"] = warns
    summary["wall_s"] = time.perf_counter() - t_start
    write_json(_clean(summary), out / "summary.json")
    return _clean(summary)


def _alanine_section(
    trajs, dih, dtrajs, n_micro, lag, cfg, out, heavy_atom_distances, dt_ps
) -> dict:
    """State labels, populations with uncertainties, classifier + attributions, forecasts."""
    from mlsim.analysis import _kinetics as kin
    from mlsim.analysis import _plots as plots
    from mlsim.analysis._attribution import state_attributions
    from mlsim.analysis._classifier import split_by_trajectory, train_state_classifier
    from mlsim.analysis._features import phi_psi_angles
    from mlsim.analysis._forecast import compare_forecasts
    from mlsim.analysis._kinetics import microstate_membership
    from mlsim.analysis._states import ALANINE_STATES, alanine_state_labels, state_populations

    res: dict = {}
    angles = [phi_psi_angles(t) for t in trajs]
    labels = [alanine_state_labels(p[:, 0], s[:, 0]) for p, s in angles]
    phi = np.concatenate([p[:, 0] for p, _ in angles])
    psi = np.concatenate([s[:, 0] for _, s in angles])
    plots.plot_ramachandran(phi, psi, out / "ramachandran.png")
    n_states = len(ALANINE_STATES)

    # Populations: MSM stationary distribution mapped to states by microstate memberships.
    member = microstate_membership(dtrajs, labels, n_micro, n_states)
    msm = kin.estimate_msm(dtrajs, lag, n_micro)
    pop = kin.observable_populations(msm, member)
    boot_pop, boot_its = kin.bootstrap_msm(
        dtrajs, lag, member, n_samples=cfg.n_bootstrap, seed=cfg.seed, labels=labels
    )
    mean, std = boot_pop.mean(0), boot_pop.std(0, ddof=1)
    slow = boot_its[:, 0] * dt_ps
    res["msm_bootstrap"] = {
        "n_samples": len(slow),
        "slowest_implied_timescale_ps_mean": float(np.nanmean(slow)),
        "slowest_implied_timescale_ps_std": float(np.nanstd(slow, ddof=1)),
    }
    h = len(trajs) // 2
    halves = {}
    for name, sel in (("first_half", slice(0, h)), ("second_half", slice(h, None))):
        try:
            m = kin.estimate_msm(dtrajs[sel], lag, n_micro)
            halves[name] = kin.observable_populations(m, member).tolist()
        except ValueError as exc:
            halves[name] = f"unavailable: {exc}"
        halves[name + "_counting"] = state_populations(np.concatenate(labels[sel])).tolist()
    res["states"] = {
        "names": list(ALANINE_STATES),
        "definition_deg": {
            "C7eq": "phi<0 or phi>=120, 0<=psi<120",
            "C5/PII": "phi<0 or phi>=120, psi>=120 or psi<-120",
            "alphaR": "phi<0 or phi>=120, -120<=psi<0",
            "alphaL": "0<=phi<120",
        },
        "populations_msm": dict(zip(ALANINE_STATES, pop.tolist())),
        "populations_bootstrap_mean": dict(zip(ALANINE_STATES, mean.tolist())),
        "populations_bootstrap_std": dict(zip(ALANINE_STATES, std.tolist())),
        "populations_counting": dict(
            zip(ALANINE_STATES, state_populations(np.concatenate(labels)).tolist())
        ),
        "populations_halves": halves,
    }

    # Classifier: heavy-atom distances only (never phi/psi, never Cartesians), held-out trajs.
    tr, te = split_by_trajectory(len(trajs), cfg.test_fraction, cfg.seed)
    dist = [heavy_atom_distances(t) for t in trajs]
    names = dist[0][1]
    xs = [d[0] for d in dist]
    clf = train_state_classifier(
        [xs[i] for i in tr],
        [labels[i] for i in tr],
        names,
        ALANINE_STATES,
        n_epochs=cfg.classifier_epochs,
        seed=cfg.seed,
    )
    x_te = np.concatenate([xs[i] for i in te])
    y_te = np.concatenate([labels[i] for i in te])
    pred = clf.predict(x_te)
    per_state = {
        n: (float(np.mean(pred[y_te == k] == k)) if np.any(y_te == k) else None)
        for k, n in enumerate(ALANINE_STATES)
    }
    attributions = state_attributions(
        clf.module, x_te, y_te, clf.train_mean, names, ALANINE_STATES, seed=cfg.seed
    )
    res["classifier"] = {
        "inputs": f"{len(names)} heavy-atom pairwise distances (Angstrom)",
        "train_trajectories": tr,
        "test_trajectories": te,
        "n_test_frames": len(y_te),
        "heldout_accuracy": float(np.mean(pred == y_te)),
        "heldout_accuracy_per_state": per_state,
        "attribution_method": "integrated gradients of the state logit, baseline = mean "
        "training frame, averaged over held-out frames of that state",
        "top_distances_per_state": attributions,
    }
    _log(f"classifier held-out accuracy {res['classifier']['heldout_accuracy']:.4f}")

    # Forecast the state `lag` frames ahead: LSTM on sin/cos(phi, psi) windows vs the MSM.
    fc = compare_forecasts(
        [dih[i] for i in tr],
        [labels[i] for i in tr],
        [dtrajs[i] for i in tr],
        [dih[i] for i in te],
        [labels[i] for i in te],
        [dtrajs[i] for i in te],
        n_states=n_states,
        n_micro=n_micro,
        window=cfg.lstm_window,
        horizon=lag,
        seed=cfg.seed,
        n_epochs=cfg.lstm_epochs,
    )
    res["forecast"] = fc
    _log(
        f"forecast error at {lag} frames: LSTM {fc['lstm']['error']:.4f}, "
        f"MSM {fc['msm']['error']:.4f}, persistence {fc['persistence']['error']:.4f}"
    )
    return res


def _vampnet_section(feats: list[np.ndarray], cfg: AnalysisConfig, lag: int) -> dict:
    """Train a VAMPnet on training trajectories; compare its held-out VAMP-2 with TICA's."""
    from mlsim.analysis._classifier import split_by_trajectory
    from mlsim.analysis._kinetics import tica_projection
    from mlsim.analysis._vampnet import train_vampnet, vamp2_score

    tr, te = split_by_trajectory(len(feats), cfg.test_fraction, cfg.seed)
    n_out = max(2, cfg.n_metastable)
    try:
        res = train_vampnet(
            [feats[i] for i in tr],
            [feats[i] for i in te],
            lag,
            n_states=n_out,
            n_epochs=cfg.vampnet_epochs,
            seed=cfg.seed,
        )
        model, _ = tica_projection([feats[i] for i in tr], lag, dim=n_out - 1)
        te_proj = [model.transform(feats[i]) for i in te if len(feats[i]) > lag]
        x = np.concatenate([p[:-lag] for p in te_proj])
        y = np.concatenate([p[lag:] for p in te_proj])
    except ValueError as exc:
        return {"error": str(exc)}
    return {
        "lag_frames": lag,
        "n_states": n_out,
        "train_vamp2": res.train_score,
        "heldout_vamp2": res.validation_score,
        "heldout_vamp2_tica_same_dim": vamp2_score(x, y),
    }
