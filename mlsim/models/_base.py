"""Shared TorchScript interface of mlsim's atomistic models: atomic energies -> total energies."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mlsim.models._graph import neighbor_pairs

__all__ = ["AtomicModel"]


class AtomicModel(nn.Module):
    """Base of per-atom energy models; a subclass defines `atomic_energies_from_pairs`.

    Everything else a caller uses (forward, energy_from_pairs, atomic_energies) is derived here, so
    every architecture exposes the same scriptable interface. Inputs, for a batch of B structures
    with N atoms in all: numbers (N,) int64, positions (N, 3) Angstrom, cell (B, 3, 3) with lattice
    vectors as rows, pbc (B, 3) bool, batch (N,) structure index of each atom.
    """

    cutoff: float
    elements: list[int]

    def _init_elements(
        self,
        elements: Sequence[int],
        self_energies: dict[int, float] | None,
        energy_scale: float,
    ) -> None:
        """Register the element list, the Z -> index map, self energies (eV) and energy scale."""
        self.elements = [int(z) for z in elements]
        if len(set(self.elements)) != len(self.elements) or not self.elements:
            raise ValueError(
                f"elements must be a non-empty list of distinct atomic numbers, got {elements}"
            )
        species_map = torch.full((max(self.elements) + 1,), -1, dtype=torch.long)
        for k, z in enumerate(self.elements):
            species_map[z] = k
        self.register_buffer("species_map", species_map)
        se = self_energies or {}
        self.register_buffer(
            "self_energy", torch.tensor([float(se.get(z, 0.0)) for z in self.elements])
        )
        # Networks output O(1) numbers; the scale (eV) maps them to the data's energy spread.
        self.register_buffer("energy_scale", torch.tensor(float(energy_scale)))

    def atomic_energies(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> Tensor:
        """Per-atom energies (eV) including the element self energies."""
        pos = positions.to(self.self_energy.dtype)
        i, j, shifts = neighbor_pairs(pos, cell.to(pos.dtype), pbc, batch, self.cutoff)
        return self.atomic_energies_from_pairs(numbers, positions, cell, pbc, batch, i, j, shifts)

    def forward(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> Tensor:
        """Total energy (eV) of each of the B structures in the batch."""
        e_atom = self.atomic_energies(numbers, positions, cell, pbc, batch)
        energy = torch.zeros(cell.shape[0], dtype=e_atom.dtype, device=e_atom.device)
        return energy.index_add(0, batch, e_atom)

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
        """Total energy (eV) per structure from a half pair list: global i, j, int64 shifts (P, 3)."""
        e_atom = self.atomic_energies_from_pairs(numbers, positions, cell, pbc, batch, i, j, shifts)
        energy = torch.zeros(cell.shape[0], dtype=e_atom.dtype, device=e_atom.device)
        return energy.index_add(0, batch, e_atom)
