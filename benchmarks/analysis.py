"""Benchmark: the full mlsim.analysis pipeline on real alanine-dipeptide MD (Amber14, vacuum, 300 K).

Trajectories come from mlsim.systems (Langevin, 2 fs, HBond constraints, 1 ps between frames); any
seed whose DCD is already in --data is reused, so an interrupted run resumes. Peers are measured
side by side in one run and reported as ratios:

* state classifier (MLP on heavy-atom distances) vs a linear classifier on the same distances;
* LSTM forecast vs MSM forecast vs persistence, on the same held-out windows;
* VAMPnet vs TICA (held-out VAMP-2 score at the MSM lag).

Also reported: slowest implied timescale and its convergence in lag time, state populations with
bootstrap uncertainties, and populations from independent halves of the trajectory set.

    nice python benchmarks/analysis.py --data runs/analysis_alanine_long --seeds 10 11 12 13 ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _generate(data: Path, seeds: list[int], ns: float) -> None:
    """Run Langevin MD with mlsim.systems for every seed whose DCD is missing."""
    from mlsim.systems import alanine_dipeptide, simulate, write_dcd

    mol = None
    for seed in seeds:
        path = data / f"seed{seed}.dcd"
        if path.exists():
            continue
        mol = mol or alanine_dipeptide("vacuum", "HBonds")
        n_frames = round(ns * 1000.0)
        fr = simulate(
            mol.system,
            mol.positions_nm,
            n_frames * 500,
            500,
            seed,
            dt_fs=2.0,
            equilibrate_steps=10_000,
            progress=True,
        )
        write_dcd(path, mol.topology, fr.positions_nm, 1.0)
        print(f"seed {seed}: {n_frames} frames in {fr.wall_s:.0f} s", file=sys.stderr)


def _linear_peer(trajs: list, summary: dict, seed: int) -> float:
    """Held-out accuracy of a linear (softmax regression) classifier on the same distances."""
    from mlsim.analysis import train_state_classifier
    from mlsim.analysis._features import heavy_atom_distances, phi_psi_angles
    from mlsim.analysis._states import ALANINE_STATES, alanine_state_labels

    tr = summary["classifier"]["train_trajectories"]
    te = summary["classifier"]["test_trajectories"]
    xs, ys = [], []
    for t in trajs:
        x, names = heavy_atom_distances(t)
        phi, psi = phi_psi_angles(t)
        xs.append(x)
        ys.append(alanine_state_labels(phi[:, 0], psi[:, 0]))
    lin = train_state_classifier(
        [xs[i] for i in tr], [ys[i] for i in tr], names, ALANINE_STATES, depth=0, seed=seed
    )
    return lin.accuracy(np.concatenate([xs[i] for i in te]), np.concatenate([ys[i] for i in te]))


def main() -> int:
    """Generate (or reuse) trajectories, run the analysis, print a table, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "runs" / "analysis_alanine_long"))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10, 18)))
    ap.add_argument("--ns", type=float, default=4.0, help="length of each generated trajectory")
    ap.add_argument("--plots", default=str(ROOT / "runs" / "analysis_benchmark"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "analysis.json"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import mdtraj as md

    from mlsim.analysis import AnalysisConfig, analyze_trajectories
    from mlsim.analysis._pipeline import write_json
    from mlsim.systems import ALANINE_PDB

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    _generate(data, args.seeds, args.ns)
    paths = [data / f"seed{s}.dcd" for s in args.seeds]
    trajs = [md.load(str(p), top=str(ALANINE_PDB)) for p in paths]
    cfg = AnalysisConfig(
        dt_ps=1.0,
        tica_lag=2,
        n_clusters=100,
        its_lags=(1, 2, 5, 10, 20, 50, 100, 200),
        n_metastable=3,
        n_bootstrap=50,
        classifier_epochs=80,
        lstm_epochs=10,
        vampnet_epochs=10,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    s = analyze_trajectories(trajs, args.plots, cfg, 1.0, [os.path.relpath(p, ROOT) for p in paths])
    wall = time.perf_counter() - t0
    lin = _linear_peer(trajs, s, args.seed)

    st, msm, clf, fc = s["states"], s["msm"], s["classifier"], s["forecast"]
    names = st["names"]
    mean = np.array([st["populations_bootstrap_mean"][n] for n in names])
    std = np.array([st["populations_bootstrap_std"][n] for n in names])
    h1 = np.array(st["populations_halves"]["first_half"], dtype=float)
    h2 = np.array(st["populations_halves"]["second_half"], dtype=float)
    # Halves are independent estimates, each with roughly sqrt(2) x the full-set error.
    z = np.abs(h1 - h2) / np.maximum(2.0 * std, 1e-12)
    result = {
        "system": "alanine dipeptide, Amber14, vacuum, 300 K, Langevin 1/ps, 2 fs, HBonds",
        "n_trajectories": s["n_trajectories"],
        "total_time_ns": s["total_time_ns"],
        "frame_interval_ps": 1.0,
        "slowest_implied_timescale_ps": msm["slowest_implied_timescale_ps"],
        "slowest_implied_timescale_ps_bootstrap": s.get("msm_bootstrap"),
        "implied_timescales_ps": msm["implied_timescales_ps"],
        "msm_lag_ps": msm["lag_ps"],
        "its_lagtimes_ps": msm["its_lagtimes_ps"],
        "its_vs_lag_ps": msm["its_vs_lag_ps"],
        "slowest_its_max_relative_change_beyond_lag": msm[
            "slowest_its_max_relative_change_beyond_lag"
        ],
        "ck_test_max_deviation": msm.get("ck_test_max_deviation"),
        "populations": {
            n: {"msm": st["populations_msm"][n], "mean": m, "std": e}
            for n, m, e in zip(names, mean.tolist(), std.tolist())
        },
        "populations_counting": st["populations_counting"],
        "populations_halves": {
            "first": dict(zip(names, h1.tolist())),
            "second": dict(zip(names, h2.tolist())),
            "abs_diff_over_2sigma": dict(zip(names, z.tolist())),
        },
        "classifier_heldout_accuracy": clf["heldout_accuracy"],
        "classifier_heldout_accuracy_per_state": clf["heldout_accuracy_per_state"],
        "linear_classifier_heldout_accuracy": lin,
        "classifier_error_ratio_mlp_over_linear": (1 - clf["heldout_accuracy"])
        / max(1 - lin, 1e-12),
        "classifier_n_test_frames": clf["n_test_frames"],
        "top_distances_per_state": clf["top_distances_per_state"],
        "forecast_horizon_ps": fc["horizon_frames"] * 1.0,
        "forecast": {k: fc[k] for k in ("lstm", "msm", "persistence")},
        "forecast_error_ratio_lstm_over_msm": fc["lstm"]["error"] / max(fc["msm"]["error"], 1e-12),
        "forecast_logloss_ratio_lstm_over_msm": fc["lstm"]["log_loss"] / fc["msm"]["log_loss"],
        "vampnet": s.get("vampnet"),
        "analysis_wall_s": wall,
        "plots": os.path.relpath(args.plots, ROOT),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(result, out)

    print(
        f"\nalanine dipeptide: {result['n_trajectories']} trajs, {result['total_time_ns']:.1f} ns"
    )
    print(f"{'quantity':<44}{'value':>14}")
    print(f"{'slowest implied timescale (ps)':<44}{msm['slowest_implied_timescale_ps']:>14.1f}")
    print(f"{'MSM lag (ps)':<44}{msm['lag_ps']:>14.1f}")
    conv = result["slowest_its_max_relative_change_beyond_lag"]
    conv_s = "n/a" if conv is None else f"{conv:.3f}"
    print(f"{'slowest ITS rel. change beyond lag':<44}{conv_s:>14}")
    for n, m, e in zip(names, mean, std):
        print(f"{'population ' + n:<44}{f'{m:.4f} +- {e:.4f}':>14}")
    print(f"{'classifier held-out accuracy (MLP)':<44}{clf['heldout_accuracy']:>14.4f}")
    print(f"{'classifier held-out accuracy (linear)':<44}{lin:>14.4f}")
    for k in ("lstm", "msm", "persistence"):
        print(
            f"{'forecast error / log-loss ' + k:<44}{fc[k]['error']:>7.4f} {fc[k]['log_loss']:>6.3f}"
        )
    r = result["forecast_error_ratio_lstm_over_msm"]
    print(f"{'forecast error ratio LSTM / MSM':<44}{r:>14.3f}")
    if "heldout_vamp2" in (s.get("vampnet") or {}):
        v = s["vampnet"]
        print(
            f"{'held-out VAMP-2 VAMPnet / TICA':<44}{v['heldout_vamp2']:>7.3f} {v['heldout_vamp2_tica_same_dim']:>6.3f}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
