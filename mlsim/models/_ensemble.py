"""Ensembles: several independently trained models; mean energy and per-member energies."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    """Mean of M member models; `member_energies` exposes each member so spread = uncertainty."""

    cutoff: float
    elements: list[int]

    def __init__(self, members: Sequence[nn.Module]) -> None:
        """Wrap members that share one element list (cutoff = the largest member cutoff)."""
        super().__init__()
        if len(members) == 0:
            raise ValueError("an ensemble needs at least one member model")
        elements = [int(z) for z in members[0].elements]
        for m in members:
            if [int(z) for z in m.elements] != elements:
                raise ValueError(
                    "all ensemble members must support the same elements, in the same order"
                )
        self.elements = elements
        self.cutoff = float(max(float(m.cutoff) for m in members))
        self.members = nn.ModuleList(list(members))

    @torch.jit.export
    def member_energies(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> Tensor:
        """Energies (eV) of every member, shape (M, B)."""
        out: list[Tensor] = []
        for m in self.members:
            out.append(m(numbers, positions, cell, pbc, batch))
        return torch.stack(out)

    @torch.jit.export
    def member_energies_from_pairs(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Energies (eV) of every member (M, B) from one half pair list; each uses its own cutoff."""
        out: list[Tensor] = []
        for m in self.members:
            out.append(m.energy_from_pairs(numbers, positions, cell, pbc, batch, i, j, shifts))
        return torch.stack(out)

    @torch.jit.export
    def energy_from_pairs(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Mean energy (eV) over members, shape (B,), from a precomputed half pair list."""
        return self.member_energies_from_pairs(
            numbers, positions, cell, pbc, batch, i, j, shifts
        ).mean(0)

    def forward(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> Tensor:
        """Mean energy (eV) over members, shape (B,)."""
        return self.member_energies(numbers, positions, cell, pbc, batch).mean(0)
