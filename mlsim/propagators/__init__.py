"""Learned large-time-step propagators with exact Metropolis-Hastings correction (Timewarp-like).

A conditional normalizing flow q(x(t+tau) | x(t)) over internal coordinates is trained on MD pairs;
the sampler proposes from it and accepts with the Boltzmann density of a target (an OpenMM System
or an mlsim model), so the chain is exact. Internal coordinates come from any molecule's bond
graph (build_zmatrix). Units: Angstrom, eV, fs (lag times tau in ps).
"""

from __future__ import annotations

import warnings
from typing import Any

from mlsim.propagators._flow import ConditionalRealNVP
from mlsim.propagators._frames import kabsch_align
from mlsim.propagators._graph import (
    MolecularGraph,
    graph_from_rdkit,
    graph_from_topology,
    perceive_bonds,
)
from mlsim.propagators._hmc import HMCKernel, TargetHMC, make_hmc
from mlsim.propagators._internal import ZMatrix
from mlsim.propagators._layout import ZMatrixLayout, atom_features, build_zmatrix, torsion_features
from mlsim.propagators._model import Propagator, PropagatorConfig
from mlsim.propagators._molecule import (
    Molecule,
    load_molecule,
    read_trajectory,
    topology_from_graph,
)
from mlsim.propagators._sampler import ChainResult, metropolis_hastings, run_propagator_chain
from mlsim.propagators._target import ModelTarget, OpenMMTarget, Target
from mlsim.propagators._train import TrainResult, make_pairs, train_propagator

__all__ = [
    "ChainResult",
    "ConditionalRealNVP",
    "HMCKernel",
    "ModelTarget",
    "MolecularGraph",
    "Molecule",
    "OpenMMTarget",
    "Propagator",
    "PropagatorConfig",
    "Target",
    "TargetHMC",
    "TrainResult",
    "ZMatrix",
    "ZMatrixLayout",
    "atom_features",
    "build_zmatrix",
    "graph_from_rdkit",
    "graph_from_topology",
    "kabsch_align",
    "load_molecule",
    "make_hmc",
    "make_pairs",
    "metropolis_hastings",
    "perceive_bonds",
    "read_trajectory",
    "run_propagator_chain",
    "topology_from_graph",
    "torsion_features",
    "train_propagator",
]

# The alanine-dipeptide tables moved to mlsim.testsystems; old imports still resolve (with a
# DeprecationWarning) so that scripts written against them keep running.
_MOVED = {"alanine_zmatrix", "ALANINE_SOFT_ROWS"}


def __getattr__(name: str) -> Any:
    """Resolve names that moved to mlsim.testsystems."""
    if name in _MOVED:
        warnings.warn(
            f"mlsim.propagators.{name} moved to mlsim.testsystems.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        import mlsim.testsystems

        return getattr(mlsim.testsystems, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
