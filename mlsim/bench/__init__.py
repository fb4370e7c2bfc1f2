"""Benchmarks behind `mlsim bench`: accuracy vs DFT, cost per evaluation, OpenMM MD speed, one report."""

from mlsim.bench._accuracy import load_structures, run_accuracy, synthetic_ethanol
from mlsim.bench._cost import run_cost, time_method
from mlsim.bench._methods import (
    Method,
    Skipped,
    dft_method,
    mlsim_method,
    openmm_forcefield_method,
    rdkit_method,
    rdkit_molecule,
    xtb_method,
)
from mlsim.bench._metrics import energy_errors, force_errors, relative_energy_residuals
from mlsim.bench._runner import PARTS, BenchConfig, find_test_set, run_bench

__all__ = [
    "PARTS",
    "BenchConfig",
    "Method",
    "Skipped",
    "dft_method",
    "energy_errors",
    "find_test_set",
    "force_errors",
    "load_structures",
    "mlsim_method",
    "openmm_forcefield_method",
    "rdkit_method",
    "rdkit_molecule",
    "relative_energy_residuals",
    "run_accuracy",
    "run_bench",
    "run_cost",
    "synthetic_ethanol",
    "time_method",
    "xtb_method",
]
