"""Output scale and per-element energy shift: network outputs of O(1) -> atomic energies in eV."""

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["AtomicShift", "EnergyScale"]


class AtomicShift(nn.Module):
    """Adds each atom's element self energy (eV); fitted on the data by `fit_self_energies`."""

    def __init__(self, elements: Sequence[int], self_energies: Mapping[int, float] | None) -> None:
        """Self energies Z -> eV for the model's elements (missing ones are 0)."""
        super().__init__()
        se = self_energies or {}
        self.register_buffer(
            "self_energy", torch.tensor([float(se.get(int(z), 0.0)) for z in elements])
        )

    def forward(self, species: Tensor) -> Tensor:
        """Self energy (N,) eV of atoms with element indices `species` (N,)."""
        return self.self_energy[species]


class EnergyScale(nn.Module):
    """Multiplies network outputs by a fixed energy (eV): networks output O(1) numbers, the data
    spreads over the scale (the trainer sets it to the force RMS of the training set)."""

    def __init__(self, scale: float) -> None:
        """Scale in eV."""
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        """x * scale."""
        return x * self.scale
