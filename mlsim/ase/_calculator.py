"""ASE calculator for mlsim models: energy, forces, stress (periodic) and ensemble uncertainty."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

__all__ = ["MLCalculator"]


class MLCalculator(Calculator):
    """Drop-in ASE calculator for an mlsim model (a model.pt path or a loaded/eager model).

    Results are in ASE units: energy/free_energy eV, forces eV/A, stress eV/A^3 (Voigt, ASE sign)
    and, for ensembles, "uncertainty": the standard deviation of the member energies (eV). The model builds its own
    pair list inside forward (with mlsim's compiled neighbor-list op for periodic and large
    systems), so there is no list here to reuse between steps.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "uncertainty"]

    def __init__(
        self,
        model: torch.nn.Module | str | os.PathLike,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        """Load the model (if a path) onto `device`; dtype casts a private copy of it."""
        super().__init__(**kwargs)
        from mlsim.openmm._module import model_dtype, resolve_model

        model = resolve_model(model, device)
        if dtype is not None and dtype != model_dtype(model):
            import copy

            model = copy.deepcopy(model).to(dtype)
        self.model = model
        self.device = torch.device(device)
        self.dtype = model_dtype(model)
        self.elements = [int(z) for z in model.elements]
        self.cutoff = float(model.cutoff)
        self.is_ensemble = hasattr(model, "member_energies")

    def _inputs(self, atoms: Any) -> tuple[torch.Tensor, ...]:
        """Model inputs (numbers, positions, cell, pbc, batch) for one Atoms object."""
        from mlsim.openmm._module import check_elements

        numbers = np.asarray(atoms.numbers)
        check_elements(self.model, numbers)
        positions = np.asarray(atoms.positions)
        if not np.isfinite(positions).all():
            raise ValueError("atoms.positions contain NaN or infinite values")
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell.array)
        if pbc.any() and abs(np.linalg.det(cell)) < 1e-9:
            raise ValueError("atoms are periodic but the cell has zero volume")
        kw = {"device": self.device}
        return (
            torch.as_tensor(numbers, dtype=torch.long, **kw),
            torch.as_tensor(positions, dtype=self.dtype, **kw),
            torch.as_tensor(cell, dtype=self.dtype, **kw).unsqueeze(0),
            torch.as_tensor(pbc, **kw).unsqueeze(0),
            torch.zeros(len(numbers), dtype=torch.long, **kw),
        )

    def calculate(
        self,
        atoms: Any = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        """Evaluate the model for `atoms` and fill self.results."""
        from mlsim.models import compute_properties

        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                "stress needs a cell periodic in all three directions"
            )
        numbers, positions, cell, pbc, batch = self._inputs(atoms)
        # Forces come with every call: MD and optimisers always ask for them next.
        out = compute_properties(
            self.model, numbers, positions, cell, pbc, batch, forces=True, stress=want_stress
        )
        energy = float(out["energy"].detach().sum())
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = out["forces"].detach().cpu().to(torch.float64).numpy()
        if want_stress:
            s = out["stress"].detach().cpu().to(torch.float64).numpy()[0]
            self.results["stress"] = np.array(
                [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
            )
        if self.is_ensemble:
            with torch.no_grad():
                members = self.model.member_energies(numbers, positions, cell, pbc, batch)
            # Unbiased spread over members would be undefined for M = 1; use the population std.
            self.results["uncertainty"] = float(members[:, 0].std(unbiased=False))
        elif "uncertainty" in properties:
            raise PropertyNotImplementedError(
                "uncertainty needs an ensemble model (member_energies)"
            )
