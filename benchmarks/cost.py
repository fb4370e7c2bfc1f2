"""Cost per energy+force evaluation: mlsim model, GFN2-xTB, MMFF94, UFF and B3LYP/6-31G* DFT, as ratios.

Usage: python benchmarks/cost.py [--quick] [other `mlsim bench` options]. Writes
benchmarks/results/cost.json (and the collected report.md / report.json) and prints the report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlsim.cli import main

HERE = Path(__file__).resolve().parent  # this benchmarks folder, whatever the working directory

if __name__ == "__main__":
    sys.exit(main(["bench", "--benchmarks", str(HERE), "--only", "cost", "--print", *sys.argv[1:]]))
