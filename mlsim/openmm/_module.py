"""An mlsim model seen through OpenMM's conventions: positions (nm) [+ box (nm)] -> energy (kJ/mol).

Both OpenMM backends run this one module: openmm-torch's TorchForce loads it as TorchScript, and
the PythonForce backend calls it eagerly in-process. Sharing it means the two backends cannot
disagree on units, periodic wrapping or element handling.
"""

# No `from __future__ import annotations`: TorchScript needs real class annotations.
import copy
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from mlsim import units

__all__ = ["OpenMMEnergy", "OpenMMEnergyForces", "check_elements", "model_dtype", "resolve_model"]


def resolve_model(
    model: torch.nn.Module | str | os.PathLike, device: str = "cpu"
) -> torch.nn.Module:
    """Return `model` itself, or load it with mlsim.models.load_model if it is a path."""
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval()
    from mlsim.models import load_model

    return load_model(model, device=device)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters/buffers (positions are cast to it)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def check_elements(model: torch.nn.Module, numbers: Sequence[int]) -> None:
    """Raise a ValueError naming every element (and its atoms) that the model was not trained on,
    or any atomic number that is not an element (outside 1..118)."""
    from mlsim.models._properties import check_atomic_numbers

    known = [int(z) for z in getattr(model, "elements", [])]
    if not known:
        raise ValueError("the model has no `elements` attribute; is it an mlsim model?")
    check_atomic_numbers([int(z) for z in numbers], known)


class OpenMMEnergy(torch.nn.Module):
    """Energy (kJ/mol) of a fixed set of atoms from positions in nm, the TorchForce convention.

    `atoms` selects the ML atoms out of all particles (ML/MM with a TorchForce, which always sees
    every particle); None means all of them. With `periodic`, forward takes OpenMM's box vectors
    (nm, reduced form) and the atoms are wrapped into the box first, so the model never sees
    coordinates that drifted many boxes away.
    """

    periodic: bool
    subset: bool
    length_scale: float
    energy_scale: float

    def __init__(
        self,
        model: torch.nn.Module,
        numbers: Sequence[int],
        atoms: Sequence[int] | None = None,
        periodic: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Bake the atomic numbers (and ML atom indices) of one system into the module."""
        super().__init__()
        numbers = [int(z) for z in numbers]
        if len(numbers) == 0:
            raise ValueError("the system has no atoms for the ML potential")
        if atoms is not None and len(atoms) != len(numbers):
            raise ValueError(f"{len(atoms)} ML atom indices but {len(numbers)} atomic numbers")
        check_elements(model, numbers)
        if dtype is not None and dtype != model_dtype(model):
            # A private copy, so asking for another precision never changes the caller's model.
            model = copy.deepcopy(model).to(dtype)
        dtype = model_dtype(model)
        self.model = model
        self.periodic = bool(periodic)
        self.subset = atoms is not None
        self.length_scale = float(units.ANGSTROM_PER_NM)
        self.energy_scale = float(units.KJ_PER_MOL_PER_EV)
        self.register_buffer("numbers", torch.tensor(numbers, dtype=torch.long))
        self.register_buffer(
            "atoms", torch.tensor(list(atoms) if atoms is not None else [], dtype=torch.long)
        )
        self.register_buffer("batch", torch.zeros(len(numbers), dtype=torch.long))
        self.register_buffer("pbc", torch.full((1, 3), self.periodic, dtype=torch.bool))
        # A zero-size buffer that carries the compute dtype (and device) through .to() calls.
        self.register_buffer("_like", torch.zeros(0, dtype=dtype))

    def energy(self, positions: Tensor, boxvectors: Tensor | None) -> Tensor:
        """Potential energy in kJ/mol (0-dim tensor) for positions (n, 3) in nm."""
        pos = positions.to(device=self._like.device, dtype=self._like.dtype)
        if self.subset:
            pos = pos.index_select(0, self.atoms)
        if self.periodic:
            if boxvectors is None:
                raise ValueError("a periodic mlsim force needs the box vectors")
            box = boxvectors.to(device=self._like.device, dtype=self._like.dtype)
            # OpenMM boxes are in reduced form (a along x, b in xy): wrap along c, then b, then a.
            pos = pos - torch.outer(torch.floor(pos[:, 2] / box[2, 2]), box[2])
            pos = pos - torch.outer(torch.floor(pos[:, 1] / box[1, 1]), box[1])
            pos = pos - torch.outer(torch.floor(pos[:, 0] / box[0, 0]), box[0])
            cell = (box * self.length_scale).unsqueeze(0)
        else:
            cell = torch.zeros(1, 3, 3, dtype=pos.dtype, device=pos.device)
        e = self.model(self.numbers, pos * self.length_scale, cell, self.pbc, self.batch)
        return e.sum() * self.energy_scale

    def forward(self, positions: Tensor, boxvectors: Tensor | None = None) -> Tensor:
        """Energy in kJ/mol; OpenMM differentiates it for the forces."""
        return self.energy(positions, boxvectors)


class OpenMMEnergyForces(OpenMMEnergy):
    """Same as OpenMMEnergy but returns (energy kJ/mol, forces kJ/mol/nm) (TorchForce setOutputsForces)."""

    def forward(  # type: ignore[override]
        self, positions: Tensor, boxvectors: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Energy and forces; the gradient is taken here instead of by OpenMM."""
        pos = positions.detach().requires_grad_(True)
        e = self.energy(pos, boxvectors)
        grads = torch.autograd.grad([e], [pos], allow_unused=True)
        g = grads[0]
        if g is None:  # no atom within the cutoff of another: zero force, not an error
            g = torch.zeros_like(pos)
        return e.detach(), -g
