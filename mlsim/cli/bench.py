"""`mlsim bench`: find the benchmark suite of a source checkout and run it (accuracy, cost, MD speed).

The benchmarks are not part of the installed package: they live in benchmarks/ of mlsim's source
repository. This command only finds that folder (--benchmarks DIR, else the benchmarks/ folder of
the checkout around the working directory or around the mlsim package, recognised by the marker
file benchmarks/suite/__init__.py) and hands the options to its suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

NAME = "bench"
HELP = "Benchmark the mlsim model against xTB, classical force fields and DFT; write a report."

_PARTS = ("accuracy", "cost", "md")
MARKER = Path("suite") / "__init__.py"  # inside the benchmarks folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the bench options."""
    parser.add_argument(
        "--benchmarks",
        type=Path,
        metavar="DIR",
        help="the benchmarks/ folder of an mlsim source checkout (default: found from the "
        "working directory or the mlsim package)",
    )
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
        "--model",
        type=Path,
        help="mlsim model file (default: the checkout's examples/ethanol/model.pt)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="results folder (default benchmarks/results; --quick: runs/bench/quick)",
    )
    parser.add_argument(
        "--peer-dir",
        type=Path,
        help="where the other benchmarks' JSON files are collected from (default benchmarks/results)",
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


def find_benchmarks(explicit: Path | None = None) -> Path:
    """Return the benchmarks folder of a source checkout, or raise FileNotFoundError saying where it lives."""
    from mlsim.data._shipped import find_in_checkout

    if explicit is not None:
        if not (explicit / MARKER).is_file():
            raise FileNotFoundError(
                f"{explicit} is not mlsim's benchmarks folder (no {MARKER} in it)"
            )
        return explicit.resolve()
    if (Path.cwd() / MARKER).is_file():  # started inside benchmarks/ itself
        return Path.cwd().resolve()
    found = find_in_checkout(Path("benchmarks") / MARKER)
    if found is None:
        raise FileNotFoundError(
            "the benchmarks are not installed with mlsim: they live in the benchmarks/ folder of "
            "mlsim's source repository. Run `mlsim bench` inside a source checkout, or give the "
            "folder with --benchmarks DIR"
        )
    return found.parent.parent


def _import_suite(folder: Path) -> ModuleType:
    """Import the suite package from `folder` (the benchmark scripts import it the same way)."""
    import importlib

    loaded = sys.modules.get("suite")
    if loaded is not None:
        where = Path(loaded.__file__ or "").resolve().parent.parent
        if where != folder:
            raise ValueError(f"a benchmark suite from {where} is already loaded, not {folder}")
    elif str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module("suite._cli")


def run(args: argparse.Namespace) -> int:
    """Find the benchmark suite and run it with these options."""
    return _import_suite(find_benchmarks(args.benchmarks)).run(args)
