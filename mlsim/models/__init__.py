"""Neural network potentials: a registry of architectures (ANI-style, PaiNN-style, plug-ins),
reusable blocks (`mlsim.models.blocks`), ensembles, and self-contained model files."""

from mlsim._schema import Option
from mlsim.models._ani import ANIModel
from mlsim.models._base import AtomicModel
from mlsim.models._ensemble import Ensemble
from mlsim.models._fast import optimize_for_inference
from mlsim.models._io import build_model, load_metadata, load_model, save_model
from mlsim.models._painn import PaiNNModel
from mlsim.models._properties import compute_properties
from mlsim.models._registry import architectures, register_architecture

__all__ = [
    "ANIModel",
    "AtomicModel",
    "Ensemble",
    "Option",
    "PaiNNModel",
    "architectures",
    "build_model",
    "compute_properties",
    "load_metadata",
    "load_model",
    "optimize_for_inference",
    "register_architecture",
    "save_model",
]
