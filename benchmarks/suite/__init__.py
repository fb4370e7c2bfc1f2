"""The benchmark suite behind `mlsim bench`: accuracy vs DFT, cost per evaluation, MD speed, one report.

Not part of the installed package: it lives in benchmarks/ of a source checkout, where the
scripts next to it import it and `mlsim bench` finds it (this file is the marker it looks for).
It measures the library as users run it: the reference rows are mlsim's labellers
(mlsim.data.make_labeller), the mlsim row is mlsim.ase.MLCalculator, MD runs through mlsim.openmm.
"""

from suite._accuracy import load_structures, run_accuracy, synthetic_ethanol
from suite._cost import run_cost, time_method
from suite._md import MDSpeedConfig, run_md_speed
from suite._methods import (
    Method,
    Skipped,
    dft_method,
    labeller_method,
    mlsim_method,
    openmm_forcefield_method,
    rdkit_method,
    rdkit_molecule,
    xtb_method,
)
from suite._metrics import energy_errors, force_errors, relative_energy_residuals
from suite._runner import PARTS, BenchConfig, find_test_set, run_bench, run_part

__all__ = [
    "PARTS",
    "BenchConfig",
    "MDSpeedConfig",
    "Method",
    "Skipped",
    "dft_method",
    "energy_errors",
    "find_test_set",
    "force_errors",
    "labeller_method",
    "load_structures",
    "mlsim_method",
    "openmm_forcefield_method",
    "rdkit_method",
    "rdkit_molecule",
    "relative_energy_residuals",
    "run_accuracy",
    "run_bench",
    "run_cost",
    "run_md_speed",
    "run_part",
    "synthetic_ethanol",
    "time_method",
    "xtb_method",
]
