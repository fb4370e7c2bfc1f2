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
    and, for ensembles, "uncertainty": the standard deviation of the member energies (eV).

    The pair list comes from mlsim's C++ neighbor list with cutoff + skin and is passed to the
    model's `energy_from_pairs`; it is reused while the atoms (count, numbers), cell and pbc are
    unchanged and no atom moved by skin/2 or more since it was built (so no pair can have come
    within the cutoff unseen). skin=0 disables reuse: the model builds its own list every call.
    `neighbor_list_builds` counts the lists built here.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "uncertainty"]

    def __init__(
        self,
        model: torch.nn.Module | str | os.PathLike,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        skin: float = 0.5,
        **kwargs: Any,
    ) -> None:
        """Load the model (if a path) onto `device`; dtype casts a private copy; skin in A."""
        super().__init__(**kwargs)
        skin = float(skin)
        if not np.isfinite(skin) or skin < 0:
            raise ValueError(f"skin must be a finite distance >= 0 Angstrom, got {skin}")
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
        self.skin = skin
        # Models saved before energy_from_pairs existed still work, without list reuse.
        self.reuse_pairs = skin > 0 and hasattr(model, "energy_from_pairs")
        self.neighbor_list_builds = 0
        self._list: dict[str, Any] | None = None

    def _pairs(self, atoms: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Half pair list (i, j, int64 shifts) within cutoff + skin, rebuilt only when needed."""
        from mlsim.neighbors import neighbor_list

        positions = np.array(atoms.positions, dtype=np.float64)
        numbers = np.asarray(atoms.numbers)
        cell = np.array(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        old = self._list
        if (
            old is not None
            and np.array_equal(old["numbers"], numbers)
            and np.array_equal(old["cell"], cell)
            and np.array_equal(old["pbc"], pbc)
        ):
            disp = positions - old["positions"]
            max2 = float((disp * disp).sum(1).max()) if len(numbers) else 0.0
            if max2 < (0.5 * self.skin) ** 2:
                return old["pairs"]
        i, j, shifts = neighbor_list(
            positions, self.cutoff + self.skin, cell if pbc.any() else None, pbc, full=False
        )
        pairs = tuple(
            torch.as_tensor(a, dtype=torch.long, device=self.device) for a in (i, j, shifts)
        )
        self._list = {
            "positions": positions,
            "numbers": numbers.copy(),
            "cell": cell,
            "pbc": pbc.copy(),
            "pairs": pairs,
        }
        self.neighbor_list_builds += 1
        return pairs

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
        pairs = self._pairs(atoms) if self.reuse_pairs else None
        # Forces come with every call: MD and optimisers always ask for them next.
        out = compute_properties(
            self.model,
            numbers,
            positions,
            cell,
            pbc,
            batch,
            forces=True,
            stress=want_stress,
            pairs=pairs,
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
                if pairs is None:
                    members = self.model.member_energies(numbers, positions, cell, pbc, batch)
                else:
                    members = self.model.member_energies_from_pairs(
                        numbers, positions, cell, pbc, batch, *pairs
                    )
            # Unbiased spread over members would be undefined for M = 1; use the population std.
            self.results["uncertainty"] = float(members[:, 0].std(unbiased=False))
        elif "uncertainty" in properties:
            raise PropertyNotImplementedError(
                "uncertainty needs an ensemble model (member_energies)"
            )
