"""Pair lists for the models: which atoms interact, and their separation vectors (differentiable).

Molecules of modest size take a pure-torch all-pairs path inside each structure: for ethanol-sized
inputs it beats any cell-list launch, and it is exactly differentiable. Periodic cells and large
structures go through mlsim's compiled neighbor-list op. The op gives integer image shifts; the
pair vector R[j] - R[i] + shift @ cell is formed here in torch so that forces (d/dR) and stress
(d/dcell) flow through autograd.
"""

import torch
from torch import Tensor

__all__ = [
    "ALL_PAIRS_MAX_ATOMS",
    "HAVE_NEIGHBOR_OP",
    "element_indices",
    "neighbor_pairs",
    "pair_vectors",
]

try:  # the op is compiled into mlsim._core and registered by importing mlsim.neighbors
    import mlsim.neighbors  # noqa: F401

    HAVE_NEIGHBOR_OP = hasattr(torch.ops.mlsim, "neighbor_list")
except ImportError:  # pragma: no cover - only while the extension is not built
    HAVE_NEIGHBOR_OP = False

# Above this many atoms in one non-periodic structure the O(n^2) all-pairs path loses to the op
# (the default of neighbor_pairs(all_pairs_max_atoms=...)).
ALL_PAIRS_MAX_ATOMS = 96


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

if HAVE_BATCH_OP:

    def _batch_op(
        pos: Tensor, cell: Tensor, pbc: Tensor, ptr: Tensor, cutoff: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Half pair list of a whole batch from the compiled batched op (global indices)."""
        return torch.ops.mlsim.neighbor_list_batch(pos, cell, pbc, ptr, cutoff, False)

else:

    def _batch_op(
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

else:

    def _op_pairs(
        positions: Tensor, cell: Tensor, pbc: Tensor, cutoff: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Reference periodic pair search used only while mlsim's compiled op is unavailable."""
        n = positions.shape[0]
        pos = positions.detach()
        c = cell.detach()
        reps: list[int] = [0, 0, 0]
        if bool(pbc.any()):
            inv = torch.linalg.inv(c)
            frac = pos @ inv
            for k in range(3):
                if bool(pbc[k]):
                    spread = float((frac[:, k].max() - frac[:, k].min()).item()) if n > 0 else 0.0
                    # Image range so that every atom within the cutoff of any atom is reached.
                    reps[k] = int(cutoff * float(inv[:, k].norm().item()) + spread) + 1
        rng = [torch.arange(-r, r + 1, device=pos.device) for r in reps]
        shifts = torch.cartesian_prod(rng[0], rng[1], rng[2]).reshape(-1, 3)
        ii = torch.arange(n, device=pos.device)
        a, b = torch.meshgrid(ii, ii, indexing="ij")
        a = a.reshape(-1)
        b = b.reshape(-1)
        out_i: list[Tensor] = []
        out_j: list[Tensor] = []
        out_s: list[Tensor] = []
        for s in range(shifts.shape[0]):
            sh = shifts[s]
            positive = bool(
                (sh[0] > 0)
                | ((sh[0] == 0) & (sh[1] > 0))
                | ((sh[0] == 0) & (sh[1] == 0) & (sh[2] > 0))
            )
            # Half list: zero shift keeps i < j; of each +-shift pair only the "positive" one.
            keep = a < b
            if positive:
                keep = torch.ones_like(a, dtype=torch.bool)
            elif not bool((sh == 0).all()):
                continue
            ai = a[keep]
            bj = b[keep]
            vec = pos[bj] - pos[ai] + sh.to(pos.dtype) @ c
            close = (vec * vec).sum(1) < cutoff * cutoff
            out_i.append(ai[close])
            out_j.append(bj[close])
            out_s.append(sh.unsqueeze(0).expand(int(close.sum().item()), 3))
        if len(out_i) == 0:
            e = torch.zeros(0, dtype=torch.long, device=pos.device)
            return e, e, torch.zeros(0, 3, dtype=torch.long, device=pos.device)
        return torch.cat(out_i), torch.cat(out_j), torch.cat(out_s).to(torch.long)


if HAVE_BATCH_OP:

    def _op_pairs_batch(
        pos: Tensor, cell: Tensor, pbc: Tensor, counts: Tensor, cutoff: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Half pair list of all structures (global indices) in one call of the batched op."""
        zero = torch.zeros(1, dtype=torch.long, device=pos.device)
        ptr = torch.cat([zero, torch.cumsum(counts, 0)])
        return _batch_op(pos, cell, pbc, ptr, cutoff)

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
    all_pairs_max_atoms: int = 96,
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


def element_indices(numbers: Tensor, species_map: Tensor, elements: list[int]) -> Tensor:
    """Map atomic numbers to 0..S-1, raising a clear error for an element the model does not know."""
    if numbers.numel() == 0:
        return numbers
    zmax = int(numbers.max())
    zmin = int(numbers.min())
    if zmin < 0 or zmax >= species_map.shape[0]:
        bad = zmax if zmax >= species_map.shape[0] else zmin
        raise ValueError(
            "element with atomic number " + str(bad) + " is not supported by this model "
            "(it knows atomic numbers " + str(elements) + ")"
        )
    idx = species_map[numbers]
    if bool((idx < 0).any()):
        bad = int(numbers[idx < 0][0])
        raise ValueError(
            "element with atomic number " + str(bad) + " is not supported by this model "
            "(it knows atomic numbers " + str(elements) + ")"
        )
    return idx
