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
        "--threads", type=int, help="threads for pyscf (default: pyscf's own choice)"
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

    options: dict[str, object] = {}
    if args.method in ("dft", "xtb"):
        options = {"charge": args.charge, "spin": args.spin}
    if args.method == "dft":
        options |= {
            "functional": args.functional,
            "basis": args.basis,
            "density_fit": not args.no_density_fit,
            "threads": args.threads,
        }
    if args.limit is not None and args.limit < 0:
        raise ValueError("--limit must be >= 0")
    inputs = read(args.input, energy_unit=args.energy_unit, length_unit=args.length_unit)
    summary = label(
        inputs,
        args.out,
        args.method,
        failed=args.failed,
        limit=args.limit,
        retry_failed=args.retry_failed,
        shuffle=args.shuffle,
        progress=not args.no_progress,
        **options,
    )
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
