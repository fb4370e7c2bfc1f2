"""Learned large-time-step propagators with exact Metropolis-Hastings correction (Timewarp-like).

Two kinds of proposal, both trained on MD pairs (x(t), x(t + tau)) and both exact under MH with
the Boltzmann density of a target (OpenMMTarget: any OpenMM System; ModelTarget: an mlsim model):

  - Propagator: a conditional normalizing flow for one molecule, over its internal coordinates
    (a Z-matrix built from the bond graph); Propagator.for_molecule(molecule, tau_ps).
  - TransferPropagator: one torsion proposal for many molecules, conditioned on the chemistry of
    each rotatable torsion; train_transfer on several molecules, then .bind(molecule) for any
    other molecule, without retraining.

run_propagator_chain samples with either (paired with make_hmc for bonds and angles).
Units: Angstrom, eV, fs (lag times tau in ps).
"""

from __future__ import annotations

import warnings
from typing import Any

from mlsim.propagators._hmc import make_hmc
from mlsim.propagators._model import Propagator
from mlsim.propagators._molecule import Molecule, load_molecule, read_trajectory
from mlsim.propagators._sampler import run_propagator_chain
from mlsim.propagators._target import ModelTarget, OpenMMTarget
from mlsim.propagators._train import make_pairs, train_propagator
from mlsim.propagators._transfer import TransferPropagator, train_transfer

# What a user calls. The building blocks (Z-matrices, graphs, flows, HMC kernels, MH on plain
# functions, torsion sets) live in the private modules and are imported from there by tests.
__all__ = [
    "ModelTarget",
    "Molecule",
    "OpenMMTarget",
    "Propagator",
    "TransferPropagator",
    "load_molecule",
    "make_hmc",
    "make_pairs",
    "read_trajectory",
    "run_propagator_chain",
    "train_propagator",
    "train_transfer",
]

# Names that left this namespace. The alanine-dipeptide tables moved to mlsim.testsystems; the
# building blocks are no longer part of the public surface but still resolve from their private
# modules. Both with a DeprecationWarning, so that scripts written against them keep running.
_MOVED = {
    "alanine_zmatrix": "mlsim.testsystems._alanine",
    "ALANINE_SOFT_ROWS": "mlsim.testsystems._alanine",
}
_PRIVATE = {
    "ChainResult": "_sampler", "metropolis_hastings": "_sampler",
    "ConditionalRealNVP": "_flow", "kabsch_align": "_frames",
    "MolecularGraph": "_graph", "graph_from_rdkit": "_graph", "graph_from_topology": "_graph",
    "perceive_bonds": "_graph", "HMCKernel": "_hmc", "TargetHMC": "_hmc", "ZMatrix": "_internal",
    "ZMatrixLayout": "_layout", "atom_features": "_layout", "build_zmatrix": "_layout",
    "torsion_features": "_layout", "PropagatorConfig": "_model", "topology_from_graph": "_molecule",
    "Target": "_target", "TrainResult": "_train",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """Resolve names that moved (see _MOVED and _PRIVATE), with a DeprecationWarning."""
    import importlib

    if name in _MOVED:
        where = _MOVED[name]
    elif name in _PRIVATE:
        where = f"{__name__}.{_PRIVATE[name]}"
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"mlsim.propagators.{name} moved to {where}.{name}", DeprecationWarning, stacklevel=2
    )
    return getattr(importlib.import_module(where), name)
