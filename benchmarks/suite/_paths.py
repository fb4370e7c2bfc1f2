"""Where the benchmark suite reads and writes: folders of the source checkout that holds it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BENCHMARKS", "EXAMPLES", "QUICK_DIR", "RESULTS", "ROOT", "WORK", "shown"]

# This package lives in <checkout>/benchmarks/suite; benchmarks/ is never installed, so its own
# location is the checkout's (the installed mlsim package never looks here by position).
BENCHMARKS = Path(__file__).resolve().parent.parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"  # the one results folder
WORK = ROOT / "runs" / "bench"  # scratch (training data, trained MD model); git-ignored
QUICK_DIR = WORK / "quick"  # a smoke run must not overwrite the real report
EXAMPLES = ROOT / "examples" / "ethanol"


def shown(path: str | Path) -> str:
    """`path` as the report prints it: relative to the checkout when inside it (results are
    committed, so they must not carry one machine's absolute paths), else as given."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
