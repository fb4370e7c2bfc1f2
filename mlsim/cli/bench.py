"""`mlsim bench`: accuracy vs DFT, cost per evaluation and OpenMM MD speed, written as one report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "bench"
HELP = "Benchmark the mlsim model against xTB, classical force fields and DFT; write a report."

_PARTS = ("accuracy", "cost", "md")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the bench options."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI-sized smoke run (tiny subsets, no DFT, no training); writes to runs/bench/quick",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[*_PARTS, "report"],
        default=list(_PARTS),
        help="run only these parts ('report': just rebuild report.md from the JSON files present)",
    )
    parser.add_argument(
        "--test-set", type=Path, help="DFT-labelled test set (default: found in examples/ethanol)"
    )
    parser.add_argument(
        "--model", type=Path, default=Path("examples/ethanol/model.pt"), help="mlsim model file"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="results folder (default benchmarks/results; --quick: runs/bench/quick)",
    )
    parser.add_argument(
        "--peer-dir",
        type=Path,
        default=Path("benchmarks/results"),
        help="where the other benchmarks' JSON files are collected from",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="threads for every method (default 1)"
    )
    parser.add_argument(
        "--md-model",
        type=Path,
        help="alanine dipeptide mlsim model for the MD part (default: train one on xTB labels)",
    )
    parser.add_argument("--max-structures", type=int, help="use at most this many test structures")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    parser.add_argument("--print", action="store_true", help="print report.md when done")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print where the report went."""
    from mlsim.bench import BenchConfig, run_bench

    # A smoke run must not overwrite the real report; runs/ is git-ignored.
    out = args.out_dir or Path("runs/bench/quick" if args.quick else "benchmarks/results")
    if args.max_structures is not None and args.max_structures < 1:
        raise ValueError(f"--max-structures must be >= 1, got {args.max_structures}")
    cfg = BenchConfig(
        quick=args.quick,
        only=tuple(args.only),
        out_dir=out,
        peer_dir=args.peer_dir,
        test_set=args.test_set,
        model=args.model,
        md_model=args.md_model,
        threads=args.threads,
        max_structures=args.max_structures,
        progress=not args.no_progress,
    )
    report = run_bench(cfg)
    own = ("accuracy", "cost", "openmm_md")  # peers' files are collected, not judged, here
    failed = [k for k in own if (report["sections"].get(k) or {}).get("status") == "failed"]
    md = out / "report.md"
    print(md.read_text() if args.print else md)
    if failed:
        print(f"mlsim bench: failed parts: {', '.join(failed)} (see report.md)", file=sys.stderr)
    return 1 if failed else 0
