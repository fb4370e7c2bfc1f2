"""Element handling: atomic numbers -> positions in the model's element list -> learned features."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mlsim.models._graph import element_indices

__all__ = ["ElementEmbedding", "ElementIndex"]


class ElementIndex(nn.Module):
    """Atomic numbers (N,) -> indices 0..S-1 in `elements`; an unknown element raises ValueError."""

    elements: list[int]

    def __init__(self, elements: Sequence[int]) -> None:
        """The model's element list: distinct atomic numbers, in the order of its tables."""
        super().__init__()
        self.elements = [int(z) for z in elements]
        if len(set(self.elements)) != len(self.elements) or not self.elements:
            raise ValueError(
                f"elements must be a non-empty list of distinct atomic numbers, got {elements}"
            )
        species_map = torch.full((max(self.elements) + 1,), -1, dtype=torch.long)
        for k, z in enumerate(self.elements):
            species_map[z] = k
        self.register_buffer("species_map", species_map)

    def forward(self, numbers: Tensor) -> Tensor:
        """Element index (N,) int64 of each atom."""
        return element_indices(numbers, self.species_map, self.elements)


class ElementEmbedding(nn.Module):
    """A learned feature vector per element, looked up by element index (ElementIndex's output)."""

    def __init__(self, num_elements: int, features: int) -> None:
        """Weights (num_elements, features) drawn from N(0, 1), as torch.nn.Embedding does."""
        super().__init__()
        # Created and initialised exactly like nn.Embedding, so a seed gives the same weights as
        # the models that used nn.Embedding directly.
        self.weight = nn.Parameter(torch.empty(num_elements, features))
        nn.init.normal_(self.weight)

    def forward(self, species: Tensor) -> Tensor:
        """Features (N, features) of atoms with element indices `species` (N,)."""
        return nn.functional.embedding(species, self.weight)
