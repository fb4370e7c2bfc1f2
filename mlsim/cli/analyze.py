"""`mlsim analyze TRAJ... --top PDB -o OUTDIR`: MSM, states, classifier, forecasts, plots, JSON."""

from __future__ import annotations

import argparse

NAME = "analyze"
HELP = "Analyse MD trajectories: TICA, MSM (ITS, CK test, PCCA+), state classifier, LSTM vs MSM."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of `mlsim analyze`; --help shows every default."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("traj", nargs="+", help="trajectory files (DCD, XTC, PDB, ...)")
    parser.add_argument("--top", help="topology PDB (needed for DCD/XTC)")
    parser.add_argument("-o", "--outdir", default="analysis", help="output folder")
    parser.add_argument("--stride", type=int, default=1, help="use every n-th frame")
    parser.add_argument(
        "--dt-ps",
        "--dt",
        dest="dt_ps",
        type=float,
        default=None,
        help="time between the frames in the files (before --stride), ps. None: read from the "
        "files (the TRAJ.json that mlsim writes, an OpenMM DCD header, XTC times); required "
        "when they do not say (e.g. DCDs from mdtraj)",
    )
    parser.add_argument("--tica-lag", type=int, default=5, help="TICA lag time (frames)")
    parser.add_argument("--clusters", type=int, default=60, help="k-means microstates")
    parser.add_argument(
        "--msm-lag", type=int, default=None, help="MSM lag (frames); default: from ITS convergence"
    )
    parser.add_argument(
        "--lags",
        default="1,2,5,10,20,50",
        help="comma-separated lag times (frames) for the implied-timescale scan",
    )
    parser.add_argument("--metastable", type=int, default=3, help="PCCA+ metastable sets")
    parser.add_argument("--bootstrap", type=int, default=40, help="bootstrap samples")
    parser.add_argument("--epochs", type=int, default=60, help="classifier training epochs")
    parser.add_argument("--lstm-epochs", type=int, default=12, help="LSTM training epochs")
    parser.add_argument("--no-vampnet", action="store_true", help="skip the VAMPnet")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def run(args: argparse.Namespace) -> int:
    """Run the analysis and print where the summary went."""
    from mlsim.analysis import AnalysisConfig, analyze

    try:
        lags = tuple(int(v) for v in args.lags.split(",") if v.strip())
    except ValueError as exc:
        raise ValueError(f"--lags must be comma-separated integers, got {args.lags!r}") from exc
    if not lags or min(lags) < 1:
        raise ValueError("--lags must contain positive integers")
    cfg = AnalysisConfig(
        stride=args.stride,
        dt_ps=args.dt_ps,
        tica_lag=args.tica_lag,
        n_clusters=args.clusters,
        its_lags=lags,
        msm_lag=args.msm_lag,
        n_metastable=args.metastable,
        n_bootstrap=args.bootstrap,
        classifier_epochs=args.epochs,
        lstm_epochs=args.lstm_epochs,
        vampnet=not args.no_vampnet,
        seed=args.seed,
    )
    summary = analyze(args.traj, args.top, args.outdir, cfg)
    msm = summary["msm"]
    print(f"wrote {args.outdir}/summary.json and plots (frames {summary['dt_ps']:g} ps apart)")
    print(
        f"slowest implied timescale: {msm['slowest_implied_timescale_ps']} ps (lag {msm['lag_ps']} ps)"
    )
    if "classifier" in summary:
        print(f"classifier held-out accuracy: {summary['classifier']['heldout_accuracy']:.4f}")
    if summary.get("warnings"):
        print(f"{len(summary['warnings'])} warnings (see summary.json and stderr)")
    return 0
