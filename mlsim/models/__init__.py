"""Neural network potentials: ANI-style (torchani AEVs) and PaiNN-style models, ensembles, I/O."""

from mlsim.models._ani import ANIModel
from mlsim.models._ensemble import Ensemble
from mlsim.models._io import build_model, load_metadata, load_model, load_trainable, save_model
from mlsim.models._painn import PaiNNModel
from mlsim.models._properties import compute_properties
from mlsim.models._shifts import fit_self_energies, force_rms

__all__ = [
    "ANIModel",
    "Ensemble",
    "PaiNNModel",
    "build_model",
    "compute_properties",
    "fit_self_energies",
    "force_rms",
    "load_metadata",
    "load_model",
    "load_trainable",
    "save_model",
]
