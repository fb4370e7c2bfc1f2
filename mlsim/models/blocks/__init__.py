"""Reusable model blocks: radial bases, cutoff functions, element handling, energy shifts and scales.

Every block is a TorchScript-scriptable `nn.Module`; mlsim's architectures (PaiNN, ANI) and
outside ones registered with `mlsim.models.register_architecture` compose them. `pairs_within`
and `pair_vectors` turn the half pair list an AtomicModel receives into differentiable vectors.
"""

from mlsim.models._graph import pair_vectors, pairs_within
from mlsim.models.blocks._cutoff import CosineCutoff, PolynomialCutoff
from mlsim.models.blocks._elements import ElementEmbedding, ElementIndex
from mlsim.models.blocks._radial import BesselRBF, GaussianRBF
from mlsim.models.blocks._scale_shift import AtomicShift, EnergyScale

__all__ = [
    "AtomicShift",
    "BesselRBF",
    "CosineCutoff",
    "ElementEmbedding",
    "ElementIndex",
    "EnergyScale",
    "GaussianRBF",
    "PolynomialCutoff",
    "pair_vectors",
    "pairs_within",
]
