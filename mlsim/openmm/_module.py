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
import math
import os
from collections.abc import Sequence
from typing import Final

import torch
from torch import Tensor

from mlsim import units
from mlsim.models._graph import neighbor_pairs

__all__ = [
    "ALL_PAIRS_MAX_ATOMS",
    "DEFAULT_SKIN",
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
# Up to this many ML atoms a model with energy_and_gradients gets a fixed list of all pairs (it
# drops those beyond its cutoff itself): no pair search at all per step.
FIXED_PAIRS_MAX_ATOMS = 64
# Neighbor-list skin (Angstrom) of larger and periodic systems, as the ASE calculator's default.
DEFAULT_SKIN = 0.5


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


@torch.jit.unused
def _uncompiled_pairs(
    self, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Left out of TorchScript: the OpenMM module of a molecule brings its own pairs."""
    raise RuntimeError("this copy of the model is for an OpenMM export: pass the pairs")


@functools.cache
def _pairs_only_class(cls: type) -> type:
    """`cls` with forward (and a `pairs` search method) marked unused, so scripting compiles
    only the pair-list entry points."""
    body = {
        "forward": _uncompiled_forward,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
    }
    if hasattr(cls, "pairs"):  # FastPaiNN: its neighbor search, exported, reaches the op
        body["pairs"] = _uncompiled_pairs
    return type(cls.__name__, (cls,), body)


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
    (nm, reduced form) and the atoms are wrapped into the box, so the model never sees
    coordinates that drifted many boxes away. Without it, a model with `energy_from_pairs` gets
    its pairs from `all_pairs` (at most ALL_PAIRS_MAX_ATOMS atoms), which needs no mlsim op.

    Larger or periodic systems keep a neighbor list within cutoff + skin (Angstrom), as the ASE
    calculator does: it is rebuilt only when the box changed or an atom moved skin/2 or more since
    the last build (then no pair can have come within the cutoff unseen); between builds the
    atoms keep the wrapping of the last build, so crossing the box edge costs no rebuild.
    skin=0, or a model without `energy_from_pairs`, searches every call. `list_builds` counts
    the builds. A model with `energy_and_gradients` (optimize_for_inference) gives the forces of
    OpenMMEnergyForces without autograd.
    """

    periodic: bool
    subset: bool
    # Final: TorchScript compiles only the branch it selects, so a scripted molecule module holds
    # no call of the model's forward (and of the op behind it) and no energy_from_pairs call for
    # models that have none.
    use_all_pairs: Final[bool]
    fixed_pairs: Final[bool]
    reuse_list: Final[bool]
    direct: Final[bool]
    cutoff: float
    skin: float
    length_scale: float
    energy_scale: float
    list_builds: int

    def __init__(
        self,
        model: torch.nn.Module,
        numbers: Sequence[int],
        atoms: Sequence[int] | None = None,
        periodic: bool = False,
        dtype: torch.dtype | None = None,
        skin: float = DEFAULT_SKIN,
    ) -> None:
        """Bake the atomic numbers (and ML atom indices) of one system into the module."""
        super().__init__()
        numbers = [int(z) for z in numbers]
        if len(numbers) == 0:
            raise ValueError("the system has no atoms for the ML potential")
        if atoms is not None and len(atoms) != len(numbers):
            raise ValueError(f"{len(atoms)} ML atom indices but {len(numbers)} atomic numbers")
        skin = float(skin)
        if not math.isfinite(skin) or skin < 0:
            raise ValueError(f"skin must be a finite distance >= 0 Angstrom, got {skin}")
        check_elements(model, numbers)
        if dtype is not None and dtype != model_dtype(model):
            # A private copy, so asking for another precision never changes the caller's model.
            model = copy.deepcopy(model).to(dtype)
        dtype = model_dtype(model)
        n = len(numbers)
        self.model = model
        self.periodic = bool(periodic)
        self.subset = atoms is not None
        has_pairs = hasattr(model, "energy_from_pairs")
        self.use_all_pairs = not self.periodic and n <= ALL_PAIRS_MAX_ATOMS and has_pairs
        self.direct = hasattr(model, "energy_and_gradients")
        # A model that drops pairs beyond its cutoff itself (energy_and_gradients) takes all
        # N(N-1)/2 pairs of a small molecule as they are: fixed, built once here.
        self.fixed_pairs = self.use_all_pairs and self.direct and n <= FIXED_PAIRS_MAX_ATOMS
        self.reuse_list = not self.use_all_pairs and has_pairs and skin > 0
        self.cutoff = float(getattr(model, "cutoff", 0.0))
        self.skin = skin
        self.length_scale = float(units.ANGSTROM_PER_NM)
        self.energy_scale = float(units.KJ_PER_MOL_PER_EV)
        self.list_builds = 0
        self.register_buffer("numbers", torch.tensor(numbers, dtype=torch.long))
        self.register_buffer(
            "atoms", torch.tensor(list(atoms) if atoms is not None else [], dtype=torch.long)
        )
        self.register_buffer("batch", torch.zeros(n, dtype=torch.long))
        self.register_buffer("pbc", torch.full((1, 3), self.periodic, dtype=torch.bool))
        # A zero-size buffer that carries the compute dtype (and device) through .to() calls.
        self.register_buffer("_like", torch.zeros(0, dtype=dtype))
        ij = (
            torch.triu_indices(n, n, 1) if self.fixed_pairs else torch.zeros(2, 0, dtype=torch.long)
        )
        self.register_buffer("fixed_i", ij[0].clone())
        self.register_buffer("fixed_j", ij[1].clone())
        self.register_buffer("fixed_shifts", torch.zeros(ij.shape[1], 3, dtype=torch.long))
        self.register_buffer("no_pairs", torch.zeros(0, dtype=torch.long))
        self.register_buffer("no_shifts", torch.zeros(0, 3, dtype=torch.long))
        self.register_buffer("no_box", torch.zeros(3, 3, dtype=dtype))
        self.register_buffer("no_cell", torch.zeros(1, 3, 3, dtype=dtype))
        # The reused neighbor list and what it was built for (empty: none yet).
        self.register_buffer("list_i", torch.zeros(0, dtype=torch.long))
        self.register_buffer("list_j", torch.zeros(0, dtype=torch.long))
        self.register_buffer("list_shifts", torch.zeros(0, 3, dtype=torch.long))
        self.register_buffer("list_positions", torch.zeros(0, 3, dtype=dtype))
        self.register_buffer("list_offset", torch.zeros(0, 3, dtype=dtype))
        self.register_buffer("list_box", torch.zeros(0, dtype=dtype))

    def wrap_offset(self, pos: Tensor, box: Tensor) -> Tensor:
        """What to subtract from positions (nm) to bring them into OpenMM's (reduced) box."""
        # Reduced form (a along x, b in xy): wrap along c, then b, then a.
        off = torch.outer(torch.floor(pos[:, 2] / box[2, 2]), box[2])
        p = pos - off
        off_b = torch.outer(torch.floor(p[:, 1] / box[1, 1]), box[1])
        p = p - off_b
        return off + off_b + torch.outer(torch.floor(p[:, 0] / box[0, 0]), box[0])

    def geometry(
        self, positions: Tensor, boxvectors: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """ML atoms' positions and cell (Angstrom) and their half pair list (empty where the
        model searches its own) from OpenMM's positions and box (nm)."""
        # Constants come from buffers: every tensor op costs microseconds on a 20-atom molecule.
        pos = positions.to(device=self._like.device, dtype=self._like.dtype)
        if self.subset:
            pos = pos.index_select(0, self.atoms)
        box = self.no_box
        cell = self.no_cell
        if self.periodic:
            if boxvectors is None:
                raise ValueError("a periodic mlsim force needs the box vectors")
            box = boxvectors.to(device=self._like.device, dtype=self._like.dtype)
            cell = (box * self.length_scale).unsqueeze(0)
        i, j, shifts = self.no_pairs, self.no_pairs, self.no_shifts
        if self.reuse_list:
            pos, i, j, shifts = self.listed(pos, box, cell)
        else:
            if self.periodic:
                pos = pos - self.wrap_offset(pos.detach(), box)
            pos = pos * self.length_scale
            if self.fixed_pairs:
                i, j, shifts = self.fixed_i, self.fixed_j, self.fixed_shifts
            elif self.use_all_pairs:
                i, j, shifts = self.all_pairs(pos)
        return pos, cell, i, j, shifts

    def listed(
        self, pos: Tensor, box: Tensor, cell: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Positions (Angstrom, wrapped as at the last build) and the reused cutoff + skin list."""
        n = pos.shape[0]
        fresh = self.list_positions.shape[0] == n and torch.equal(self.list_box, box)
        out = pos * self.length_scale
        if fresh:
            out = (pos - self.list_offset) * self.length_scale
            if n > 0:
                d = out.detach() - self.list_positions
                fresh = bool((d * d).sum(1).max() < 0.25 * self.skin * self.skin)
        if not fresh:
            offset = torch.zeros_like(pos)
            if self.periodic:
                offset = self.wrap_offset(pos.detach(), box)
            out = (pos - offset) * self.length_scale
            i, j, shifts = neighbor_pairs(
                out.detach(), cell, self.pbc, self.batch, self.cutoff + self.skin
            )
            self.list_i = i
            self.list_j = j
            self.list_shifts = shifts
            self.list_offset = offset.detach()
            self.list_box = box.detach().clone()
            self.list_positions = out.detach().clone()
            self.list_builds += 1
        return out, self.list_i, self.list_j, self.list_shifts

    def energy(self, positions: Tensor, boxvectors: Tensor | None) -> Tensor:
        """Potential energy in kJ/mol (0-dim tensor) for positions (n, 3) in nm."""
        pos, cell, i, j, shifts = self.geometry(positions, boxvectors)
        if self.use_all_pairs:
            e = self.model.energy_from_pairs(
                self.numbers, pos, cell, self.pbc, self.batch, i, j, shifts
            )
        elif self.reuse_list:
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
        if self.direct:
            return self.direct_forces(positions, boxvectors)
        pos = positions.detach().requires_grad_(True)
        e = self.energy(pos, boxvectors)
        grads = torch.autograd.grad([e], [pos], allow_unused=True)
        g = grads[0]
        if g is None:  # no atom within the cutoff of another: zero force, not an error
            g = torch.zeros_like(pos)
        return e.detach(), -g

    def direct_forces(self, positions: Tensor, boxvectors: Tensor | None) -> tuple[Tensor, Tensor]:
        """forward for a model with energy_and_gradients: one call, no autograd graph."""
        pos, cell, i, j, shifts = self.geometry(positions.detach(), boxvectors)
        if not (self.use_all_pairs or self.reuse_list):
            i, j, shifts = self.model.pairs(pos, cell, self.pbc, self.batch)
        energy, gpos, gcell, dmin = self.model.energy_and_gradients(
            self.numbers, pos, cell, self.pbc, self.batch, i, j, shifts, False
        )
        # eV/A -> kJ/mol/nm; wrapping and the subset are translations and a selection, so the
        # gradient with respect to OpenMM's positions is this, row by row.
        forces = gpos * (-self.energy_scale * self.length_scale)
        if self.subset:
            full = torch.zeros(positions.shape[0], 3, dtype=forces.dtype, device=forces.device)
            forces = full.index_copy(0, self.atoms, forces)
        return energy.sum() * self.energy_scale, forces.to(positions.dtype)
