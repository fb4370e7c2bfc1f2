"""Learned large-time-step propagators with exact Metropolis-Hastings correction (Timewarp-like).

A conditional normalizing flow q(x(t+tau) | x(t)) is trained on MD pairs; the sampler proposes
from it and accepts with the Boltzmann density of an OpenMM System, so the chain is exact.
"""

from mlsim.propagators._flow import ConditionalRealNVP
from mlsim.propagators._frames import kabsch_align
from mlsim.propagators._hmc import HMCKernel
from mlsim.propagators._internal import ALANINE_SOFT_ROWS, ZMatrix, alanine_zmatrix
from mlsim.propagators._model import Propagator, PropagatorConfig
from mlsim.propagators._sampler import ChainResult, metropolis_hastings, run_propagator_chain
from mlsim.propagators._target import OpenMMTarget
from mlsim.propagators._train import TrainResult, make_pairs, train_propagator

__all__ = [
    "ALANINE_SOFT_ROWS",
    "HMCKernel",
    "ChainResult",
    "ConditionalRealNVP",
    "OpenMMTarget",
    "Propagator",
    "PropagatorConfig",
    "TrainResult",
    "ZMatrix",
    "alanine_zmatrix",
    "kabsch_align",
    "make_pairs",
    "metropolis_hastings",
    "run_propagator_chain",
    "train_propagator",
]
