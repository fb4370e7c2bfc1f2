"""The labelled structure: the unit every stage of mlsim passes around (ASE units throughout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MAX_Z", "Structure"]

MAX_Z = 118  # oganesson; ASE and the models have no element beyond it


@dataclass
class Structure:
    """One configuration with optional labels: numbers, positions (A), cell, pbc, energy (eV), forces (eV/A), stress (eV/A^3)."""

    numbers: np.ndarray  # (n,) int64 atomic numbers
    positions: np.ndarray  # (n, 3) float64, Angstrom
    cell: np.ndarray | None = None  # (3, 3) float64, rows are lattice vectors (ASE), or None
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))  # (3,) bool
    energy: float | None = None  # eV
    forces: np.ndarray | None = None  # (n, 3) eV/A
    stress: np.ndarray | None = None  # (3, 3) eV/A^3, ASE sign convention (positive = tensile)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        bad = (self.numbers < 1) | (self.numbers > MAX_Z)
        if bad.any():
            # Checked here, not only in validation: Z=-1 would index chemical_symbols as "Og" and
            # Z=119 fail with an IndexError deep in a labeller or a model.
            k = int(np.argmax(bad))
            raise ValueError(f"atom {k}: atomic number {self.numbers[k]} is outside 1..{MAX_Z}")
        n = len(self.numbers)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        if self.positions.shape != (n, 3):
            raise ValueError(f"positions must have shape ({n}, 3), got {self.positions.shape}")
        if self.cell is not None:
            self.cell = np.asarray(self.cell, dtype=np.float64)
            if self.cell.shape != (3, 3):
                raise ValueError(f"cell must have shape (3, 3), got {self.cell.shape}")
        self.pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        if self.pbc.any() and self.cell is None:
            raise ValueError("pbc is set but no cell was given")
        if self.energy is not None:
            self.energy = float(self.energy)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
            if self.forces.shape != (n, 3):
                raise ValueError(f"forces must have shape ({n}, 3), got {self.forces.shape}")
        if self.stress is not None:
            self.stress = np.asarray(self.stress, dtype=np.float64)
            if self.stress.shape == (9,):  # flattened 3x3 (ASE db stores it so)
                self.stress = self.stress.reshape(3, 3)
            if self.stress.shape == (6,):  # Voigt order xx yy zz yz xz xy, as ASE
                xx, yy, zz, yz, xz, xy = self.stress
                self.stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            if self.stress.shape != (3, 3):
                raise ValueError(f"stress must have shape (3, 3) or (6,), got {self.stress.shape}")

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def periodic(self) -> bool:
        """True when any direction is periodic."""
        return bool(self.pbc.any())

    def to_atoms(self) -> Any:
        """Return an `ase.Atoms` with the labels attached through a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(
            numbers=self.numbers,
            positions=self.positions,
            cell=self.cell if self.cell is not None else np.zeros((3, 3)),
            pbc=self.pbc,
        )
        atoms.info.update(self.info)
        results: dict[str, Any] = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces
        if self.stress is not None:
            results["stress"] = self.stress
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    @classmethod
    def from_atoms(cls, atoms: Any) -> Structure:
        """Build a Structure from an `ase.Atoms`, taking labels from its calculator if it has them."""
        cell = np.asarray(atoms.cell.array, dtype=float)
        has_cell = bool(np.abs(cell).sum() > 0)
        energy = forces = stress = None
        calc = atoms.calc
        if calc is not None:
            res = getattr(calc, "results", {})
            energy = res.get("energy")
            forces = res.get("forces")
            stress = res.get("stress")
        return cls(
            numbers=atoms.numbers.copy(),
            positions=atoms.positions.copy(),
            cell=cell if has_cell else None,
            pbc=atoms.pbc.copy() if has_cell else np.zeros(3, dtype=bool),
            energy=energy,
            forces=forces,
            stress=stress,
            info=dict(atoms.info),
        )
