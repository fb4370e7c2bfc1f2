"""Energies, forces (-dE/dR) and stress (strain derivative / volume) from any mlsim model.

compute_properties is where mlsim evaluates a model for a user (ASE calculator, `mlsim evaluate`,
benchmarks), so it refuses inputs the models cannot describe (unknown elements, overlapping atoms)
and outputs that are not numbers (NaN/inf from a damaged model), naming the structure and atoms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "MIN_DISTANCE",
    "check_atomic_numbers",
    "check_min_distance",
    "compute_properties",
    "evaluate_checked",
]

# Closer than this (Angstrom) two atoms overlap: no model was trained there (the shortest bond,
# H2, is 0.74 A) and coincident atoms give NaN (a zero-length pair vector has no direction).
MIN_DISTANCE = 0.1
_MAX_Z = 118
# Up to this many atoms the per-call checks run in Python (cheaper than tensor ops there).
_SMALL = 256


def _symbol(z: int) -> str:
    """Chemical symbol of atomic number z, or 'Z=z' when z is not an element."""
    if 1 <= z <= _MAX_Z:
        from ase.data import chemical_symbols

        return chemical_symbols[z]
    return f"Z={z}"


def _formula(numbers: Tensor) -> str:
    """Chemical formula (Hill order as ASE writes it) of the atomic numbers of one structure."""
    zs = [int(z) for z in numbers.tolist()]
    if all(1 <= z <= _MAX_Z for z in zs):
        from ase.symbols import Symbols

        return Symbols(zs).get_chemical_formula()
    return f"{len(zs)} atoms"


def _structure(numbers: Tensor, batch: Tensor, b: int, first_structure: int) -> str:
    """Names structure b of a batch for an error message: index and formula."""
    sel = numbers[batch == b]
    return f"structure {first_structure + b} ({_formula(sel)}, {sel.numel()} atoms)"


def _atoms_list(indices: list[int], limit: int = 5) -> str:
    """'atom 3' or 'atoms 3, 7, 9, ...' for a message."""
    more = ", ..." if len(indices) > limit else ""
    head = ", ".join(str(k) for k in indices[:limit])
    return ("atom " if len(indices) == 1 else "atoms ") + head + more


def check_atomic_numbers(numbers: Sequence[int] | Tensor, known: Sequence[int] | None) -> None:
    """Raise ValueError naming atoms whose Z is not 1..118, or not in `known` when given."""
    t = torch.as_tensor(numbers)
    if t.numel() == 0:
        return
    if t.numel() <= _SMALL:
        # A molecule: a set test in Python beats the tensor ops below by ~10x.
        zs = set(t.tolist())
        if known is None:
            if min(zs) >= 1 and max(zs) <= _MAX_Z:
                return
        elif zs <= {int(z) for z in known if 1 <= int(z) <= _MAX_Z}:
            return
    ok = (t >= 1) & (t <= _MAX_Z)
    if known is not None:
        ok = ok & torch.isin(t, torch.tensor([int(z) for z in known], device=t.device))
    if bool(ok.all()):
        return
    zs = [int(z) for z in t.tolist()]
    invalid = sorted({z for z in zs if not 1 <= z <= _MAX_Z})
    if invalid:
        z = invalid[0]
        where = _atoms_list([k for k, x in enumerate(zs) if x == z])
        raise ValueError(
            f"the system contains atomic number {z} at {where}, which is not an element "
            f"(atomic numbers are 1..{_MAX_Z})"
        )
    if known is None:
        return
    have = {int(z) for z in known}
    missing = sorted(set(zs) - have)
    if missing:
        names = ", ".join(f"{_symbol(z)} (Z={z})" for z in missing)
        where = "; ".join(
            f"{_symbol(z)} at {_atoms_list([k for k, x in enumerate(zs) if x == z])}"
            for z in missing
        )
        known_names = ", ".join(_symbol(int(z)) for z in known)
        raise ValueError(
            f"the system contains {names}, which the model does not know (it has {known_names}): "
            f"{where}"
        )


def check_min_distance(
    numbers: Tensor,
    positions: Tensor,
    cell: Tensor,
    pbc: Tensor,
    batch: Tensor,
    min_distance: float = MIN_DISTANCE,
    first_structure: int = 0,
) -> None:
    """Raise ValueError naming the closest two atoms (and distance) if any are < min_distance A.

    Periodic images count; indices are those inside the structure, elements by symbol.
    """
    from mlsim.models._graph import neighbor_pairs

    pos = positions.detach()
    c = cell.detach().to(pos.dtype)
    i, j, shifts = neighbor_pairs(pos, c, pbc, batch, float(min_distance))
    if i.numel() == 0:
        return
    vec = pos[j] - pos[i] + torch.bmm(shifts.to(pos.dtype).unsqueeze(1), c[batch[i]]).squeeze(1)
    dist = vec.norm(dim=1)
    k = int(torch.argmin(dist))
    a, b = int(i[k]), int(j[k])
    s = int(batch[a])
    # Indices inside the structure: the caller's atoms.positions index for a single structure.
    la, lb = int((batch[:a] == s).sum()), int((batch[:b] == s).sum())
    za, zb = int(numbers[a]), int(numbers[b])
    first = f"atom {la} ({_symbol(za)})"
    second = "its own periodic image" if a == b else f"atom {lb} ({_symbol(zb)})"
    raise ValueError(
        f"{first} and {second} of {_structure(numbers, batch, s, first_structure)} are "
        f"{float(dist[k]):.3g} A apart, closer than {min_distance} A: overlapping atoms have no "
        "defined energy (NaN forces); check the positions (duplicated atoms?)"
    )


def _neighbor_memory_error(exc: RuntimeError) -> MemoryError | None:
    """The MemoryError for a neighbor list that did not fit, raised inside a TorchScript model."""
    for line in str(exc).splitlines():
        if "neighbor list too large" in line:
            return MemoryError(line.split("RuntimeError: ", 1)[-1].strip())
    return None


def _check_finite(
    out: dict[str, Tensor], numbers: Tensor, batch: Tensor, first_structure: int
) -> None:
    """Raise ValueError naming the structures whose energy, forces or stress are NaN or infinite."""
    parts = {k: v.detach() for k, v in out.items()}
    # A sum is finite only if every term is: one reduction per output in the common case. (A sum
    # can also overflow; then the element-wise test below finds nothing and lets it pass.)
    if math.isfinite(sum(float(v.sum()) for v in parts.values())):
        return
    n_structures = parts["energy"].shape[0]
    bad: dict[int, list[str]] = {}
    for b in torch.nonzero(~torch.isfinite(parts["energy"])).view(-1).tolist():
        bad.setdefault(b, []).append("energy")
    if "forces" in parts:
        atom_bad = (~torch.isfinite(parts["forces"])).any(1).to(torch.long)
        per = torch.zeros(n_structures, dtype=torch.long, device=atom_bad.device)
        per = per.index_add(0, batch, atom_bad)
        for b in torch.nonzero(per).view(-1).tolist():
            bad.setdefault(b, []).append("forces")
    if "stress" in parts:
        for b in torch.nonzero(~torch.isfinite(parts["stress"]).flatten(1).all(1)).tolist():
            bad.setdefault(b[0], []).append("stress")
    if not bad:
        return
    first = min(bad)
    more = f" (and {len(bad) - 1} more structures)" if len(bad) > 1 else ""
    raise ValueError(
        f"the model returned non-finite (NaN or inf) {' and '.join(bad[first])} for "
        f"{_structure(numbers, batch, first, first_structure)}{more}; the model file may be "
        "damaged or the structure far outside its training data"
    )


def compute_properties(
    model: nn.Module,
    numbers: Tensor,
    positions: Tensor,
    cell: Tensor,
    pbc: Tensor,
    batch: Tensor,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
    pairs: tuple[Tensor, Tensor, Tensor] | None = None,
    min_distance: float | None = MIN_DISTANCE,
    check_finite: bool = True,
    first_structure: int = 0,
) -> dict[str, Tensor]:
    """Evaluate a batch: "energy" (B,) eV, "forces" (N,3) eV/A, "stress" (B,3,3) eV/A^3 (ASE sign).

    create_graph=True keeps the graph of the derivatives so a loss on forces can be trained.
    pairs=(i, j, shifts): a precomputed half list (global indices, int64 image shifts) passed to
    model.energy_from_pairs instead of letting the model build one; the shifts are integers, so
    the list stays valid under the strain used for the stress.

    Raises ValueError for atomic numbers outside 1..118 or unknown to the model, for two atoms
    closer than min_distance A (None: no check), and, with check_finite, for NaN/inf results;
    the messages name the structure (first_structure + its index in the batch) and the atoms.
    MemoryError when the model's neighbor list cannot fit in memory.
    """
    if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] != numbers.shape[0]:
        raise ValueError(
            f"positions must have shape ({numbers.shape[0]}, 3), got {tuple(positions.shape)}"
        )
    if cell.ndim != 3 or cell.shape[1:] != (3, 3) or pbc.shape != (cell.shape[0], 3):
        raise ValueError("cell must have shape (B, 3, 3) and pbc (B, 3)")
    if batch.shape != numbers.shape:
        raise ValueError("batch must give one structure index per atom")
    if not torch.isfinite(positions).all():
        raise ValueError("positions contain NaN or infinite values")
    known = getattr(model, "elements", None)
    check_atomic_numbers(numbers, [int(z) for z in known] if known is not None else None)
    return evaluate_checked(
        model,
        numbers,
        positions,
        cell,
        pbc,
        batch,
        forces,
        stress,
        create_graph,
        pairs,
        min_distance,
        check_finite,
        first_structure,
    )


def evaluate_checked(
    model: nn.Module,
    numbers: Tensor,
    positions: Tensor,
    cell: Tensor,
    pbc: Tensor,
    batch: Tensor,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
    pairs: tuple[Tensor, Tensor, Tensor] | None = None,
    min_distance: float | None = MIN_DISTANCE,
    check_finite: bool = True,
    first_structure: int = 0,
) -> dict[str, Tensor]:
    """compute_properties for inputs whose shapes, finite positions and atomic numbers the caller
    has checked already (MLCalculator checks a system once, not every step); the overlap and
    non-finite-result checks still run here."""
    check_distance = min_distance is not None and min_distance > 0
    if (
        hasattr(model, "energy_and_gradients")
        and (forces or stress)
        and not create_graph
        and not positions.requires_grad
        and not cell.requires_grad
    ):
        return _direct(
            model,
            numbers,
            positions,
            cell,
            pbc,
            batch,
            forces,
            stress,
            pairs,
            min_distance if check_distance else None,
            check_finite,
            first_structure,
        )
    if check_distance:
        check_min_distance(numbers, positions, cell, pbc, batch, min_distance, first_structure)
    out: dict[str, Tensor] = {}
    pos = positions
    if forces and not pos.requires_grad:
        pos = pos.detach().requires_grad_(True)
    c = cell.to(pos.dtype)
    wrt = [pos] if forces else []
    if stress:
        volume = torch.linalg.det(c).abs()
        if bool((volume < 1e-12).any()):
            raise ValueError(
                "stress needs a periodic cell with non-zero volume for every structure"
            )
        # Homogeneous strain applied to atoms and cell: dE/d(strain) at zero strain is the virial.
        strain = torch.zeros_like(c).requires_grad_(True)
        deform = torch.eye(3, dtype=pos.dtype, device=pos.device) + strain
        pos_in = torch.bmm(pos.unsqueeze(1), deform[batch]).squeeze(1)
        cell_in = torch.bmm(c, deform)
        wrt.append(strain)
    else:
        pos_in, cell_in = pos, c
    if pairs is not None and not hasattr(model, "energy_from_pairs"):
        raise ValueError("pairs were given but the model has no energy_from_pairs method")
    try:
        if pairs is None:
            energy = model(numbers, pos_in, cell_in, pbc, batch)
        else:
            energy = model.energy_from_pairs(numbers, pos_in, cell_in, pbc, batch, *pairs)
    except RuntimeError as exc:  # TorchScript turns the op's MemoryError into a RuntimeError
        oom = _neighbor_memory_error(exc)
        if oom is None:
            raise
        raise oom from exc
    out["energy"] = energy
    if wrt:
        grads = torch.autograd.grad(
            energy.sum(),
            wrt,
            create_graph=create_graph,
            retain_graph=create_graph,
            allow_unused=True,
        )
        k = 0
        if forces:
            g = grads[0]
            out["forces"] = -g if g is not None else torch.zeros_like(pos)
            k = 1
        if stress:
            g = grads[k]
            g = g if g is not None else torch.zeros_like(c)
            out["stress"] = g / volume.view(-1, 1, 1)
    if check_finite:
        _check_finite(out, numbers, batch, first_structure)
    return out


def _direct(
    model: nn.Module,
    numbers: Tensor,
    positions: Tensor,
    cell: Tensor,
    pbc: Tensor,
    batch: Tensor,
    forces: bool,
    stress: bool,
    pairs: tuple[Tensor, Tensor, Tensor] | None,
    min_distance: float | None,
    check_finite: bool,
    first_structure: int,
) -> dict[str, Tensor]:
    """compute_properties for a model with energy_and_gradients (optimize_for_inference).

    One call gives energy, dE/dR, dE/dcell and the shortest distance of its pair list, so there
    is no autograd graph, no backward pass and no second pair list for the overlap check: the
    list holds every pair within the cutoff, hence every pair closer than min_distance when that
    is below the cutoff (otherwise the separate check runs first, as for other models).
    """
    if min_distance is not None and min_distance > float(model.cutoff):
        check_min_distance(numbers, positions, cell, pbc, batch, min_distance, first_structure)
        min_distance = None
    if stress:
        volume = torch.linalg.det(cell.to(positions.dtype)).abs()
        if bool((volume < 1e-12).any()):
            raise ValueError(
                "stress needs a periodic cell with non-zero volume for every structure"
            )
    try:
        i, j, shifts = pairs if pairs is not None else model.pairs(positions, cell, pbc, batch)
        energy, gpos, gcell, dmin = model.energy_and_gradients(
            numbers, positions, cell, pbc, batch, i, j, shifts, stress
        )
    except RuntimeError as exc:  # TorchScript turns the op's MemoryError into a RuntimeError
        oom = _neighbor_memory_error(exc)
        if oom is None:
            raise
        raise oom from exc
    if min_distance is not None and not float(dmin) >= min_distance:
        # Names the closest atoms (it finds the same pair); a NaN falls through to check_finite.
        check_min_distance(numbers, positions, cell, pbc, batch, min_distance, first_structure)
    out = {"energy": energy}
    if forces:
        out["forces"] = -gpos.to(positions.dtype)
    if stress:
        # Strain derivative: sum over atoms of R (x) dE/dR plus cell^T dE/dcell, per structure.
        pos = positions.detach().to(gpos.dtype)
        virial = torch.bmm(cell.detach().to(gpos.dtype).transpose(1, 2), gcell)
        virial = virial.index_add(0, batch, pos.unsqueeze(2) * gpos.unsqueeze(1))
        out["stress"] = (virial / volume.to(gpos.dtype).view(-1, 1, 1)).to(positions.dtype)
    if check_finite:
        _check_finite(out, numbers, batch, first_structure)
    return out
