"""Rebuild benchmarks/results/report.md/.json from the JSON files present (runs nothing).

Usage: python benchmarks/report.py [--quick] [other `mlsim bench` options]. Writes
benchmarks/results/report.json (and the collected report.md / report.json) and prints the report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlsim.cli import main

HERE = Path(__file__).resolve().parent  # this benchmarks folder, whatever the working directory

if __name__ == "__main__":
    sys.exit(
        main(["bench", "--benchmarks", str(HERE), "--only", "report", "--print", *sys.argv[1:]])
    )
