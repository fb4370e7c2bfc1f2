"""An mlsim model seen through OpenMM's conventions: positions (nm) [+ box (nm)] -> energy (kJ/mol).

Both OpenMM backends run this one module: openmm-torch's TorchForce loads it as TorchScript, and
the PythonForce backend calls it eagerly in-process. Sharing it means the two backends cannot
disagree on units, periodic wrapping or element handling.

Non-periodic systems (molecules) find their pairs with plain torch ops, so their TorchScript calls
no mlsim op and loads in a host that never imported mlsim; periodic ones use the model's own
neighbor search, mlsim's cell-list op, which such a host must load first (see mlsim.neighbors).
"""

# No `from __future__ import annotations`: TorchScript needs real class annotations.
import copy
import functools
import os
from collections.abc import Sequence
from typing import Final

import torch
from torch import Tensor

from mlsim import units

__all__ = [
    "ALL_PAIRS_MAX_ATOMS",
    "OpenMMEnergy",
    "OpenMMEnergyForces",
    "check_elements",
    "model_dtype",
    "pairs_only",
    "resolve_model",
]

# Up to this many ML atoms a non-periodic system takes its pairs from all N(N-1)/2 of them, masked
# by distance: no custom op, at the price of N^2 temporaries (about 30 MB at 1,000 atoms). Larger
# systems use the model's own neighbor search (the cell-list op).
ALL_PAIRS_MAX_ATOMS = 1000


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


@torch.jit.unused
def _uncompiled_forward(
    self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
) -> Tensor:
    """Left out of TorchScript: an OpenMM module for a molecule calls energy_from_pairs only."""
    raise RuntimeError("this copy of the model is for an OpenMM export: call energy_from_pairs")


@functools.cache
def _pairs_only_class(cls: type) -> type:
    """`cls` with forward marked unused, so scripting compiles only the pair-list entry points."""
    return type(
        cls.__name__,
        (cls,),
        {
            "forward": _uncompiled_forward,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        },
    )


def pairs_only(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an eager model whose TorchScript has only the pair-list methods, not forward.

    TorchScript compiles the forward of every eager submodule and saves every compiled method,
    called or not; the models' forward runs their neighbor search, which reaches mlsim's op. In
    the copy, each (sub)model with `energy_from_pairs` has its forward replaced by a stub that
    raises, so a module that calls only energy_from_pairs scripts to a file without the op.
    """
    copied = copy.deepcopy(model)
    for sub in copied.modules():
        if hasattr(sub, "energy_from_pairs") and not isinstance(sub, torch.jit.ScriptModule):
            sub.__class__ = _pairs_only_class(type(sub))
    return copied


class OpenMMEnergy(torch.nn.Module):
    """Energy (kJ/mol) of a fixed set of atoms from positions in nm, the TorchForce convention.

    `atoms` selects the ML atoms out of all particles (ML/MM with a TorchForce, which always sees
    every particle); None means all of them. With `periodic`, forward takes OpenMM's box vectors
    (nm, reduced form) and the atoms are wrapped into the box first, so the model never sees
    coordinates that drifted many boxes away. Without it, a model with `energy_from_pairs` gets
    its pairs from `all_pairs` (at most ALL_PAIRS_MAX_ATOMS atoms), which needs no mlsim op.
    """

    periodic: bool
    subset: bool
    # Final: TorchScript compiles only the branch it selects, so a scripted molecule module holds
    # no call of the model's forward (and of the op behind it) and no energy_from_pairs call for
    # models that have none.
    use_all_pairs: Final[bool]
    cutoff: float
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
        self.use_all_pairs = (
            not self.periodic
            and len(numbers) <= ALL_PAIRS_MAX_ATOMS
            and hasattr(model, "energy_from_pairs")
        )
        self.cutoff = float(getattr(model, "cutoff", 0.0))
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
        pos = pos * self.length_scale
        if self.use_all_pairs:
            i, j, shifts = self.all_pairs(pos)
            e = self.model.energy_from_pairs(
                self.numbers, pos, cell, self.pbc, self.batch, i, j, shifts
            )
        else:
            e = self.model(self.numbers, pos, cell, self.pbc, self.batch)
        return e.sum() * self.energy_scale

    def all_pairs(self, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Half pair list (i < j) of a molecule within the model's cutoff (Angstrom), shifts zero."""
        n = positions.shape[0]
        ij = torch.triu_indices(n, n, 1, device=positions.device)
        # Integers only come out (as in mlsim.models' neighbor_pairs): the model forms the
        # differentiable vectors itself, with the same strict test against its cutoff.
        pos = positions.detach()
        vec = pos[ij[1]] - pos[ij[0]]
        keep = (vec * vec).sum(1) < self.cutoff * self.cutoff
        i = ij[0][keep]
        j = ij[1][keep]
        return i, j, torch.zeros(i.shape[0], 3, dtype=torch.long, device=positions.device)

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
