"""Pair lists for the models: which atoms interact, and their separation vectors (differentiable).

Molecules of modest size take a pure-torch all-pairs path inside each structure: for ethanol-sized
inputs it beats any cell-list launch, and it is exactly differentiable. Periodic cells and large
structures go through mlsim's compiled neighbor-list op (in libmlsim_torch.so, which importing
mlsim.neighbors loads; TorchScript files that reach it need that library in their host). The op
gives integer image shifts; the pair vector R[j] - R[i] + shift @ cell is formed here in torch so
that forces (d/dR) and stress (d/dcell) flow through autograd.
"""

import torch
from torch import Tensor

__all__ = [
    "ALL_PAIRS_MAX_ATOMS",
    "HAVE_NEIGHBOR_OP",
    "element_indices",
    "neighbor_pairs",
    "pair_vectors",
    "pairs_within",
]

try:  # the op lives in libmlsim_torch.so, which importing mlsim.neighbors loads
    import mlsim.neighbors  # noqa: F401

    HAVE_NEIGHBOR_OP = hasattr(torch.ops.mlsim, "neighbor_list")
except ImportError:  # pragma: no cover - only while the extension is not built
    HAVE_NEIGHBOR_OP = False

# Above this many atoms in one non-periodic structure the O(n^2) all-pairs path loses to the op
# (default of neighbor_pairs(all_pairs_max_atoms=...)). Measured on the 2-core CPU, 1 thread, 5 A:
# 16 ethanols 0.66 ms all-pairs vs 0.89 ms op; 48 atoms 0.84 vs 1.09; 96 atoms 1.34 vs 1.11 ms.
ALL_PAIRS_MAX_ATOMS = 64


def _all_pairs(positions: Tensor, batch: Tensor, num_structures: int) -> tuple[Tensor, Tensor]:
    """Every i < j pair inside each structure of a sorted batch (no cutoff applied yet)."""
    n = positions.shape[0]
    counts = torch.bincount(batch, minlength=num_structures)
    start = torch.cumsum(counts, 0) - counts
    # For atom i, its partners are the atoms after it in the same structure.
    local = torch.arange(n, device=positions.device) - start[batch]
    n_after = counts[batch] - local - 1
    i = torch.repeat_interleave(torch.arange(n, device=positions.device), n_after)
    first = torch.cumsum(n_after, 0) - n_after
    offset = torch.arange(i.shape[0], device=positions.device) - first[i]
    j = i + 1 + offset
    return i, j


HAVE_BATCH_OP = HAVE_NEIGHBOR_OP and hasattr(torch.ops.mlsim, "neighbor_list_batch")

# The name of the function that calls the op is part of TorchScript's "Unknown builtin op:
# mlsim::neighbor_list_batch" error in a host that has not loaded the op library, so it names it.
if HAVE_BATCH_OP:

    def _batch_op_in_libmlsim_torch(
        pos: Tensor, cell: Tensor, pbc: Tensor, ptr: Tensor, cutoff: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Half pair list of a whole batch from the compiled batched op (global indices)."""
        return torch.ops.mlsim.neighbor_list_batch(pos, cell, pbc, ptr, cutoff, False)

else:

    def _batch_op_in_libmlsim_torch(
        pos: Tensor, cell: Tensor, pbc: Tensor, ptr: Tensor, cutoff: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Placeholder (never called) while the batched op is not compiled in."""
        raise RuntimeError("torch.ops.mlsim.neighbor_list_batch is not available")


if HAVE_NEIGHBOR_OP:

    def _op_pairs(
        positions: Tensor, cell: Tensor, pbc: Tensor, cutoff: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Half pair list of one structure from the compiled op (indices local to the structure)."""
        return torch.ops.mlsim.neighbor_list(positions.detach(), cell.detach(), pbc, cutoff, False)

else:  # pragma: no cover - only while the op library is not built

    def _op_pairs(
        positions: Tensor, cell: Tensor, pbc: Tensor, cutoff: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Stand-in that explains why periodic or large inputs cannot be handled."""
        raise RuntimeError(
            "periodic cells and structures with more atoms than the all-pairs limit need mlsim's "
            "compiled neighbor list (torch.ops.mlsim.neighbor_list in libmlsim_torch.so), which "
            "could not be loaded: `import mlsim.neighbors` says why; build it with `make install`"
        )


if HAVE_BATCH_OP:

    def _op_pairs_batch(
        pos: Tensor, cell: Tensor, pbc: Tensor, counts: Tensor, cutoff: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Half pair list of all structures (global indices) in one call of the batched op."""
        zero = torch.zeros(1, dtype=torch.long, device=pos.device)
        ptr = torch.cat([zero, torch.cumsum(counts, 0)])
        return _batch_op_in_libmlsim_torch(pos, cell, pbc, ptr, cutoff)

else:

    def _op_pairs_batch(
        pos: Tensor, cell: Tensor, pbc: Tensor, counts: Tensor, cutoff: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Half pair list of all structures (global indices), one structure at a time."""
        start = torch.cumsum(counts, 0) - counts
        parts_i: list[Tensor] = []
        parts_j: list[Tensor] = []
        parts_s: list[Tensor] = []
        for b in range(cell.shape[0]):
            s0 = int(start[b])
            ib, jb, sh = _op_pairs(pos[s0 : s0 + int(counts[b])], cell[b], pbc[b], cutoff)
            parts_i.append(ib + s0)
            parts_j.append(jb + s0)
            parts_s.append(sh)
        return torch.cat(parts_i), torch.cat(parts_j), torch.cat(parts_s)


def neighbor_pairs(
    positions: Tensor,
    cell: Tensor,
    pbc: Tensor,
    batch: Tensor,
    cutoff: float,
    all_pairs_max_atoms: int = 64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Half list (each pair once) within cutoff: global indices i, j and integer image shifts (P, 3).

    Only integers come out: the vectors are formed by `pair_vectors` outside any branch, because
    TorchScript's profiling executor lost gradients of tensors produced inside this if/else.
    """
    num_structures = cell.shape[0]
    pos = positions.detach()
    c = cell.detach()
    counts = torch.bincount(batch, minlength=num_structures)
    if not bool(pbc.any()) and (counts.numel() == 0 or int(counts.max()) <= all_pairs_max_atoms):
        i, j = _all_pairs(pos, batch, num_structures)
        shifts = torch.zeros(i.shape[0], 3, dtype=torch.long, device=pos.device)
        vec = pos[j] - pos[i]
    else:
        i, j, shifts = _op_pairs_batch(pos, c, pbc, counts, cutoff)
        vec = pos[j] - pos[i] + torch.bmm(shifts.to(pos.dtype).unsqueeze(1), c[batch[i]]).squeeze(1)
    keep = (vec * vec).sum(1) < cutoff * cutoff
    return i[keep], j[keep], shifts[keep]


def pair_vectors(
    positions: Tensor, cell: Tensor, batch: Tensor, i: Tensor, j: Tensor, shifts: Tensor
) -> Tensor:
    """Differentiable R[j] - R[i] + shift @ cell (gradients reach positions and cell)."""
    image = torch.bmm(shifts.to(positions.dtype).unsqueeze(1), cell[batch[i]]).squeeze(1)
    return positions[j] - positions[i] + image


def pairs_within(
    positions: Tensor,
    cell: Tensor,
    batch: Tensor,
    i: Tensor,
    j: Tensor,
    shifts: Tensor,
    cutoff: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep only the given pairs closer than cutoff (the same strict test as neighbor_pairs).

    Precomputed lists (e.g. built with cutoff + skin) carry pairs beyond the cutoff; the models'
    cutoff functions are not zero there (PaiNN's cosine is periodic), so they are dropped here.
    Integers only come out, for the same TorchScript reason as neighbor_pairs.
    """
    vec = pair_vectors(positions.detach(), cell.detach(), batch, i, j, shifts)
    keep = (vec * vec).sum(1) < cutoff * cutoff
    return i[keep], j[keep], shifts[keep]


def element_indices(numbers: Tensor, species_map: Tensor, elements: list[int]) -> Tensor:
    """Map atomic numbers to 0..S-1, raising a clear error for an element the model does not know."""
    if numbers.numel() == 0:
        return numbers
    zmax = int(numbers.max())
    zmin = int(numbers.min())
    if zmin < 0 or zmax >= species_map.shape[0]:
        bad = zmax if zmax >= species_map.shape[0] else zmin
        raise ValueError(_unknown_element(bad, elements))
    idx = species_map[numbers]
    if bool((idx < 0).any()):
        raise ValueError(_unknown_element(int(numbers[idx < 0][0]), elements))
    return idx


def _unknown_element(z: int, elements: list[int]) -> str:
    """The error message for atomic number z, which a model of `elements` does not know."""
    return (
        "element with atomic number " + str(z) + " is not supported by this model "
        "(it knows atomic numbers " + str(elements) + ")"
    )
