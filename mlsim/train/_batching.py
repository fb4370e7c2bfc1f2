"""Turn Structures into packed tensors (numbers, positions, cell, pbc, batch) for the models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Batch", "TensorData", "collate"]


@dataclass
class Batch:
    """A packed batch: model inputs plus reference labels (NaN-free; masks say what is labelled)."""

    numbers: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    batch: torch.Tensor
    n_atoms: torch.Tensor  # (B,) float
    energy: torch.Tensor  # (B,)
    forces: torch.Tensor  # (N, 3)
    has_energy: torch.Tensor  # (B,) bool
    has_forces: torch.Tensor  # (N,) bool

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on `device`."""
        return Batch(**{f: getattr(self, f).to(device) for f in self.__dataclass_fields__})

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """The five tensors of the model's forward()."""
        return self.numbers, self.positions, self.cell, self.pbc, self.batch


class TensorData:
    """Structures pre-converted once to flat tensors, so batches are cheap index operations."""

    def __init__(self, structures: Sequence, dtype: torch.dtype = torch.float32) -> None:
        """Convert; structures without a cell get zeros (the models' convention for no pbc)."""
        n = np.array([len(s) for s in structures], dtype=np.int64)
        self.ptr = np.concatenate([[0], np.cumsum(n)])
        self.n_atoms = n
        self.numbers = (
            torch.from_numpy(np.concatenate([s.numbers for s in structures]))
            if len(n)
            else torch.zeros(0, dtype=torch.long)
        )
        self.positions = torch.tensor(
            np.concatenate([s.positions for s in structures]), dtype=dtype
        )
        self.cell = torch.tensor(
            np.stack([s.cell if s.cell is not None else np.zeros((3, 3)) for s in structures]),
            dtype=dtype,
        )
        self.pbc = torch.tensor(np.stack([s.pbc for s in structures]))
        self.energy = torch.tensor(
            [s.energy if s.energy is not None else 0.0 for s in structures], dtype=torch.float64
        )
        self.has_energy = torch.tensor([s.energy is not None for s in structures])
        self.forces = torch.tensor(
            np.concatenate(
                [s.forces if s.forces is not None else np.zeros((len(s), 3)) for s in structures]
            ),
            dtype=dtype,
        )
        self.has_forces = torch.tensor(
            np.concatenate([np.full(len(s), s.forces is not None) for s in structures])
        )

    def __len__(self) -> int:
        return len(self.n_atoms)

    def batch(self, idx: Sequence[int]) -> Batch:
        """Pack the structures `idx` (any order) into one Batch."""
        idx = np.asarray(idx, dtype=np.int64)
        atom_idx = torch.from_numpy(
            np.concatenate([np.arange(self.ptr[k], self.ptr[k + 1]) for k in idx])
            if len(idx)
            else np.zeros(0, np.int64)
        )
        t = torch.from_numpy(idx)
        counts = torch.from_numpy(self.n_atoms[idx])
        return Batch(
            numbers=self.numbers[atom_idx],
            positions=self.positions[atom_idx],
            cell=self.cell[t],
            pbc=self.pbc[t],
            batch=torch.repeat_interleave(torch.arange(len(idx)), counts),
            n_atoms=counts.to(self.positions.dtype),
            energy=self.energy[t],
            forces=self.forces[atom_idx],
            has_energy=self.has_energy[t],
            has_forces=self.has_forces[atom_idx],
        )


def collate(structures: Sequence, dtype: torch.dtype = torch.float32) -> Batch:
    """Pack a list of Structures into one Batch."""
    return TensorData(structures, dtype).batch(range(len(structures)))
