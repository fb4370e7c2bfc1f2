"""What `mlsim bench` runs once it has found this suite: options -> BenchConfig -> report."""

from __future__ import annotations

import argparse
import sys

from suite._runner import QUICK_DIR, RESULTS, BenchConfig, run_bench

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed `mlsim bench` options; print where the report went."""
    out = args.out_dir or (QUICK_DIR if args.quick else RESULTS)
    if args.max_structures is not None and args.max_structures < 1:
        raise ValueError(f"--max-structures must be >= 1, got {args.max_structures}")
    cfg = BenchConfig(
        quick=args.quick,
        only=tuple(args.only),
        out_dir=out,
        threads=args.threads,
        max_structures=args.max_structures,
        test_set=args.test_set,
        md_model=args.md_model,
        progress=not args.no_progress,
    )
    # Defaults (the shipped model, the one results folder) come from the checkout, not the cwd.
    if args.model is not None:
        cfg.model = args.model
    if args.peer_dir is not None:
        cfg.peer_dir = args.peer_dir
    report = run_bench(cfg)
    own = ("accuracy", "cost", "md_speed")  # peers' files are collected, not judged, here
    failed = [k for k in own if (report["sections"].get(k) or {}).get("status") == "failed"]
    md = out / "report.md"
    print(md.read_text() if args.print else md)
    if failed:
        print(f"mlsim bench: failed parts: {', '.join(failed)} (see report.md)", file=sys.stderr)
    return 1 if failed else 0
