"""OpenMM MD speed on alanine dipeptide: Amber14 vs an mlsim TorchForce (steps/s, ns/day).

Usage: python benchmarks/openmm_md.py [--quick] [other `mlsim bench` options]. Writes
benchmarks/results/openmm_md.json (and the collected report.md / report.json) and prints the report.
"""

from __future__ import annotations

import sys

from mlsim.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "md", "--print", *sys.argv[1:]]))
