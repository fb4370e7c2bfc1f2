"""Energies, forces (-dE/dR) and stress (strain derivative / volume) from any mlsim model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["compute_properties"]


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
) -> dict[str, Tensor]:
    """Evaluate a batch: "energy" (B,) eV, "forces" (N,3) eV/A, "stress" (B,3,3) eV/A^3 (ASE sign).

    create_graph=True keeps the graph of the derivatives so a loss on forces can be trained.
    pairs=(i, j, shifts): a precomputed half list (global indices, int64 image shifts) passed to
    model.energy_from_pairs instead of letting the model build one; the shifts are integers, so
    the list stays valid under the strain used for the stress.
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
    if pairs is None:
        energy = model(numbers, pos_in, cell_in, pbc, batch)
    else:
        if not hasattr(model, "energy_from_pairs"):
            raise ValueError("pairs were given but the model has no energy_from_pairs method")
        energy = model.energy_from_pairs(numbers, pos_in, cell_in, pbc, batch, *pairs)
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
    return out
