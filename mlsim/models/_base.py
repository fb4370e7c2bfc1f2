"""Shared TorchScript interface of mlsim's atomistic models: atomic energies -> total energies."""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mlsim.models._graph import neighbor_pairs
from mlsim.models.blocks import AtomicShift, ElementIndex, EnergyScale

__all__ = ["AtomicModel", "sum_by_structure", "upgrade_state_dict"]

# State-dict keys of models saved before the element table, shift and scale became blocks
# (AtomicModel registered them as its own buffers): old name -> new name.
_RENAMED_KEYS = {
    "species_map": "element_index.species_map",
    "self_energy": "atomic_shift.self_energy",
    "energy_scale": "energy_scale.scale",
}


class AtomicModel(nn.Module):
    """Base of per-atom energy models; a subclass sets `cutoff` and defines `atomic_outputs_from_pairs`.

    The base owns the element table (ElementIndex), the per-element self energies (AtomicShift)
    and the output scale (EnergyScale): atomic energy = scale * network output + self energy.
    Everything a caller uses (forward, energy_from_pairs, atomic_energies) is derived here, so
    every architecture exposes the same scriptable interface. Inputs, for a batch of B structures
    with N atoms in all: numbers (N,) int64, positions (N, 3) Angstrom, cell (B, 3, 3) with lattice
    vectors as rows, pbc (B, 3) bool, batch (N,) structure index of each atom.
    """

    cutoff: float
    elements: list[int]

    def __init__(
        self,
        elements: Sequence[int],
        self_energies: Mapping[int, float] | None = None,
        energy_scale: float = 1.0,
    ) -> None:
        """Element list (atomic numbers), self energies Z -> eV (fitted from data), scale in eV."""
        super().__init__()
        self.element_index = ElementIndex(elements)
        self.elements = self.element_index.elements
        self.atomic_shift = AtomicShift(self.elements, self_energies)
        # Networks output O(1) numbers; the scale (eV) maps them to the data's energy spread.
        self.energy_scale = EnergyScale(energy_scale)

    def atomic_outputs_from_pairs(
        self,
        species: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """The network: per-atom outputs (N,) of O(1), from element indices and a half pair list.

        positions and cell come in the model's dtype; pairs beyond `cutoff` must be ignored
        (`mlsim.models.blocks.pairs_within` drops them).
        """
        raise NotImplementedError("an AtomicModel subclass defines atomic_outputs_from_pairs")

    def float_dtype(self) -> torch.dtype:
        """The model's floating-point dtype (its buffers follow .double() and .float())."""
        return self.atomic_shift.self_energy.dtype

    def network_inputs(
        self, numbers: Tensor, positions: Tensor, cell: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Element indices, and positions and cell in the model's dtype (what the network takes)."""
        # The blocks' forward() is called directly: nn.Module.__call__ costs microseconds per
        # call in eager mode, a percent of a small molecule's energy+forces (scripting inlines).
        species = self.element_index.forward(numbers)
        pos = positions.to(self.float_dtype())
        return species, pos, cell.to(pos.dtype)

    @torch.jit.export
    def atomic_energies_from_pairs(
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
        """Per-atom energies (eV) from a precomputed half pair list (pairs beyond cutoff ignored)."""
        species, pos, c = self.network_inputs(numbers, positions, cell)
        out = self.atomic_outputs_from_pairs(species, pos, c, pbc, batch, i, j, shifts)
        return self.energy_scale.forward(out) + self.atomic_shift.forward(species)

    def half_pairs(
        self, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Half pair list (i, j, shifts) within `cutoff`, built in the model's dtype."""
        pos = positions.to(self.float_dtype())
        return neighbor_pairs(pos, cell.to(pos.dtype), pbc, batch, self.cutoff)

    def atomic_energies(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> Tensor:
        """Per-atom energies (eV) including the element self energies."""
        i, j, shifts = self.half_pairs(positions, cell, pbc, batch)
        return self.atomic_energies_from_pairs(numbers, positions, cell, pbc, batch, i, j, shifts)

    def forward(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> Tensor:
        """Total energy (eV) of each of the B structures in the batch."""
        e_atom = self.atomic_energies(numbers, positions, cell, pbc, batch)
        return sum_by_structure(e_atom, batch, cell.shape[0])

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
        return sum_by_structure(e_atom, batch, cell.shape[0])

    def renamed_state_dict_keys(self) -> dict[str, str]:
        """Old -> new state-dict keys, so weights saved by earlier mlsim versions load."""
        return dict(_RENAMED_KEYS)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Rename keys of older saved models (see renamed_state_dict_keys), then load as usual."""
        # nn.Module.load_state_dict calls this on a module before its children, with the dict
        # it checks for missing and unexpected keys, so a rename here is seen everywhere.
        _rename(state_dict, prefix, self.renamed_state_dict_keys())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def sum_by_structure(values: Tensor, batch: Tensor, n_structures: int) -> Tensor:
    """Per-atom values (N,) summed over the atoms of each structure: (n_structures,)."""
    out = torch.zeros(n_structures, dtype=values.dtype, device=values.device)
    return out.index_add(0, batch, values)


def _rename(state: dict[str, Any], prefix: str, renames: Mapping[str, str]) -> None:
    """Rename old keys under `prefix` in place (a key already present under its new name wins)."""
    for old, new in renames.items():
        if prefix + old in state and prefix + new not in state:
            state[prefix + new] = state.pop(prefix + old)


def upgrade_state_dict(model: nn.Module, state: Mapping[str, Any]) -> dict[str, Any]:
    """`state` (of `model`, maybe saved by an earlier mlsim) with today's key names.

    load_state_dict renames by itself; this is for code that matches keys on its own, e.g. an
    exponential moving average of the weights restored from an old checkpoint.
    """
    out = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, AtomicModel):
            _rename(out, f"{name}." if name else "", module.renamed_state_dict_keys())
    return out
