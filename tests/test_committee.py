"""committee_properties: an Ensemble evaluated member by member (eager, scripted, with a shared
pair list, inference-optimised members) and any other committee through member_energies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mlsim.models import Ensemble, PaiNNModel, optimize_for_inference
from mlsim.models._uncertainty import committee_properties
from mlsim.neighbors import neighbor_list

torch.set_num_threads(1)


class _Joint(nn.Module):
    """A committee that is not an Ensemble: only member_energies (as a plug-in could offer)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(members)
        self.elements = members[0].elements
        self.cutoff = members[0].cutoff

    def member_energies(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> Tensor:
        return torch.stack([m(numbers, positions, cell, pbc, batch) for m in self.nets])


def _ethanol() -> tuple[Tensor, ...]:
    from ase.build import molecule

    a = molecule("CH3CH2OH")
    a.positions += np.random.default_rng(0).normal(0, 0.05, a.positions.shape)
    return (
        torch.as_tensor(a.numbers),
        torch.as_tensor(a.positions, dtype=torch.float64),
        torch.zeros(1, 3, 3, dtype=torch.float64),
        torch.zeros(1, 3, dtype=torch.bool),
        torch.zeros(9, dtype=torch.long),
    )


def test_member_by_member_equals_finite_differences_and_every_path(tmp_path):
    torch.manual_seed(0)
    members = [
        PaiNNModel([1, 6, 8], cutoff=4.0 + 0.5 * k, features=8, num_interactions=2).double()
        for k in range(3)
    ]
    ens = Ensemble(members).eval()
    z, pos, cell, pbc, batch = _ethanol()
    ref = committee_properties(ens, z, pos, cell, pbc, batch)
    # Member forces are each member's exact gradient (central differences).
    h = 1e-5
    for atom, axis in ((0, 0), (4, 2), (8, 1)):
        plus, minus = pos.clone(), pos.clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        with torch.no_grad():
            fd = -(
                ens.member_energies(z, plus, cell, pbc, batch)
                - ens.member_energies(z, minus, cell, pbc, batch)
            )[:, 0] / (2 * h)
        np.testing.assert_allclose(ref["member_forces"][:, atom, axis], fd, rtol=1e-6, atol=1e-9)
    # Members with different cutoffs on one half list within the largest cutoff (+ skin).
    i, j, s = neighbor_list(pos.numpy(), 5.5, None, False, full=False)
    pairs = tuple(torch.as_tensor(x, dtype=torch.long) for x in (i, j, s))
    from mlsim.models import load_model, save_model

    spec = {"architecture": "ensemble", "members": [{"architecture": "painn"}] * 3}
    save_model(ens, tmp_path / "model.pt", spec)
    others = {
        "scripted": committee_properties(torch.jit.script(ens), z, pos, cell, pbc, batch),
        "loaded": committee_properties(load_model(tmp_path / "model.pt"), z, pos, cell, pbc, batch),
        "pairs": committee_properties(ens, z, pos, cell, pbc, batch, pairs),
        "joint": committee_properties(_Joint(members), z, pos, cell, pbc, batch),
    }
    for name, out in others.items():
        for key in ("energy", "forces", "energy_std", "forces_std", "member_forces"):
            torch.testing.assert_close(out[key], ref[key], rtol=1e-10, atol=1e-12, msg=name)
    # Inference-optimised members take their direct gradient path (no autograd): same numbers.
    fast = optimize_for_inference(ens)
    for p in (None, pairs):
        out = committee_properties(fast, z, pos, cell, pbc, batch, p)
        for key in ("energy", "forces", "forces_std"):
            torch.testing.assert_close(out[key], ref[key], rtol=1e-6, atol=1e-7, msg=key)
    assert float(ref["forces_std"].min()) > 0


def test_overlapping_atoms_are_named_before_any_member_runs():
    torch.manual_seed(1)
    ens = Ensemble([PaiNNModel([1, 6, 8], cutoff=4.0, features=8).double() for _ in range(2)])
    z, pos, cell, pbc, batch = _ethanol()
    pos[3] = pos[2] + 0.01
    with pytest.raises(ValueError, match="atom 2 .* and atom 3"):
        committee_properties(ens, z, pos, cell, pbc, batch)
