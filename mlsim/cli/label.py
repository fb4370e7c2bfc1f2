"""`mlsim label`: reference energies and forces (pyscf DFT, GFN2-xTB or any ASE calculator), resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "label"
HELP = "Label structures with DFT (pyscf), GFN2-xTB or an ASE calculator; a rerun resumes."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the label options."""
    parser.add_argument(
        "input", type=Path, help="structures to label (extxyz[.gz], npz, db, or any ASE format)"
    )
    parser.add_argument(
        "--method",
        required=True,
        help="dft (pyscf), xtb (tblite GFN2-xTB) or package.module:CalculatorClass (an ASE calculator)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="labelled output, .extxyz or .extxyz.gz"
    )
    parser.add_argument(
        "--failed",
        type=Path,
        help="where unconverged structures go (default OUT.failed.extxyz[.gz])",
    )
    parser.add_argument(
        "--functional", default="b3lyp", help="DFT exchange-correlation functional (default b3lyp)"
    )
    parser.add_argument("--basis", default="6-31g*", help="DFT basis set (default 6-31g*)")
    parser.add_argument(
        "--no-density-fit", action="store_true", help="DFT without density fitting (slower)"
    )
    parser.add_argument("--charge", type=int, default=0, help="total charge (default 0)")
    parser.add_argument(
        "--spin", type=int, default=0, help="2S = unpaired electrons (default 0 -> RKS; >0 -> UKS)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="threads per worker for pyscf, tblite and BLAS (OMP_NUM_THREADS etc.; default: one "
        "worker takes the libraries' own choice, N workers share the cores)",
    )
    where = parser.add_argument_group("where labelling runs")
    where.add_argument(
        "--executor",
        choices=("local", "dask"),
        help="local: worker processes on this machine (default); dask: a Dask cluster "
        "(--scheduler ADDRESS, or a LocalCluster of --workers processes)",
    )
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes: local default 1 (in this process), LocalCluster default "
        "cores / threads; not with --scheduler (the cluster has its own)",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler of a running cluster, e.g. tcp://10.0.0.5:8786 (implies --executor dask)",
    )
    where.add_argument(
        "--scheduler-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to connect to --scheduler before giving up (default 10)",
    )
    where.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="per worker process, e.g. 4GB: a structure needing more goes to the failed file",
    )
    where.add_argument(
        "--chunk-size",
        type=int,
        metavar="N",
        help="structures per task (default: 1 at first, then about 0.5 s of work, at most 64)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        help="label only the first N input structures (raise later to continue)",
    )
    parser.add_argument(
        "--shuffle",
        type=int,
        metavar="SEED",
        help="label in a seeded random order (--limit counts in it): a partial run covers all inputs",
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="try structures in the failed file again"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--energy-unit", help="units of an npz input that does not record them")
    parser.add_argument("--length-unit", help="units of an npz input that does not record them")


def run(args: argparse.Namespace) -> int:
    """Label the input; already-labelled structures in --out are kept and skipped."""
    from mlsim.data import label, read
    from mlsim.data._executors import ExecutorError

    options: dict[str, object] = {}
    if args.method in ("dft", "xtb"):
        options = {"charge": args.charge, "spin": args.spin}
    if args.method == "dft":
        options |= {
            "functional": args.functional,
            "basis": args.basis,
            "density_fit": not args.no_density_fit,
        }
    if args.threads is not None:
        options["threads"] = args.threads
    if args.limit is not None and args.limit < 0:
        raise ValueError("--limit must be >= 0")
    inputs = read(args.input, energy_unit=args.energy_unit, length_unit=args.length_unit)
    try:
        summary = label(
            inputs,
            args.out,
            args.method,
            failed=args.failed,
            limit=args.limit,
            retry_failed=args.retry_failed,
            shuffle=args.shuffle,
            progress=not args.no_progress,
            executor=args.executor,
            workers=args.workers,
            scheduler=args.scheduler,
            scheduler_timeout=args.scheduler_timeout,
            memory_limit=args.memory_limit,
            chunk_size=args.chunk_size,
            **options,
        )
    except ExecutorError as exc:
        # Cluster unreachable or lost: one line; what was labelled is kept for the rerun.
        print(f"mlsim label: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{summary.out}: {summary.n_labelled} labelled now, {summary.n_failed} failed now, "
        f"{summary.n_already} done before, of {summary.n_inputs}"
        + (
            f"; failures in {summary.failed}"
            if summary.failed.exists() and summary.failed.stat().st_size
            else ""
        ),
        file=sys.stderr,
    )
    return 0
