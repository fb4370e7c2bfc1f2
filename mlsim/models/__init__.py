"""Neural network potentials: a registry of architectures (ANI-style, PaiNN-style, plug-ins),
reusable blocks (`mlsim.models.blocks`), ensembles, and self-contained model files."""

from mlsim._schema import Option
from mlsim.models._ani import ANIModel
from mlsim.models._base import AtomicModel, upgrade_state_dict
from mlsim.models._ensemble import Ensemble
from mlsim.models._fast import FastPaiNN, optimize_for_inference
from mlsim.models._io import build_model, load_metadata, load_model, load_trainable, save_model
from mlsim.models._painn import PaiNNModel
from mlsim.models._properties import compute_properties
from mlsim.models._registry import (
    Architecture,
    architectures,
    get_architecture,
    register_architecture,
)
from mlsim.models._shifts import fit_self_energies, force_rms

__all__ = [
    "ANIModel",
    "Architecture",
    "AtomicModel",
    "Ensemble",
    "FastPaiNN",
    "Option",
    "PaiNNModel",
    "architectures",
    "build_model",
    "compute_properties",
    "fit_self_energies",
    "force_rms",
    "get_architecture",
    "load_metadata",
    "load_model",
    "load_trainable",
    "optimize_for_inference",
    "register_architecture",
    "save_model",
    "upgrade_state_dict",
]
