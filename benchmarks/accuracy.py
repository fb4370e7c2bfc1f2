"""Accuracy vs the DFT test set (ethanol): mlsim model, GFN2-xTB, MMFF94, UFF, CHARMM36, GAFF2.

Usage: python benchmarks/accuracy.py [--quick] [other `mlsim bench` options]. Writes
benchmarks/results/accuracy.json (and the collected report.md / report.json) and prints the report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlsim.cli import main

HERE = Path(__file__).resolve().parent  # this benchmarks folder, whatever the working directory

if __name__ == "__main__":
    sys.exit(
        main(["bench", "--benchmarks", str(HERE), "--only", "accuracy", "--print", *sys.argv[1:]])
    )
