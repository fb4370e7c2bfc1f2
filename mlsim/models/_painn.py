"""PaiNN-style equivariant message passing (Schuett et al. 2021) on mlsim's neighbor pairs."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mlsim._schema import Option
from mlsim.models._base import AtomicModel
from mlsim.models._graph import pair_vectors, pairs_within
from mlsim.models._registry import register_architecture
from mlsim.models.blocks import BesselRBF, CosineCutoff, ElementEmbedding

__all__ = ["PaiNNModel"]


class _Message(nn.Module):
    """Continuous-filter message from neighbours j to atom i, scalar and vector channels."""

    def __init__(self, features: int, num_rbf: int) -> None:
        """Create the scalar MLP and the radial filter (both 3F wide)."""
        super().__init__()
        self.features = features
        self.phi = nn.Sequential(
            nn.Linear(features, features), nn.SiLU(), nn.Linear(features, 3 * features)
        )
        self.filt = nn.Linear(num_rbf, 3 * features)

    def forward(
        self, s: Tensor, v: Tensor, i: Tensor, j: Tensor, rbf: Tensor, fcut: Tensor, unit: Tensor
    ) -> list[Tensor]:
        """Return updated (s, v) after summing messages over the (full) pair list."""
        f = self.features
        x = self.phi(s)[j] * self.filt(rbf) * fcut.unsqueeze(1)
        xs, xvv, xvs = x[:, :f], x[:, f : 2 * f], x[:, 2 * f :]
        dv = v[j] * xvv.unsqueeze(1) + unit.unsqueeze(2) * xvs.unsqueeze(1)
        s = s.index_add(0, i, xs)
        v = v.index_add(0, i, dv)
        return [s, v]


class _Update(nn.Module):
    """Per-atom mixing of scalar and vector channels (rotation-equivariant)."""

    def __init__(self, features: int) -> None:
        """Create the U, V vector maps and the gating MLP."""
        super().__init__()
        self.features = features
        self.uv = nn.Linear(features, 2 * features, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * features, features), nn.SiLU(), nn.Linear(features, 3 * features)
        )

    def forward(self, s: Tensor, v: Tensor) -> list[Tensor]:
        """Return updated (s, v)."""
        f = self.features
        uv = self.uv(v)
        u, vv = uv[:, :, :f], uv[:, :, f:]
        # The small epsilon keeps the norm differentiable for zero vectors (first layer).
        vnorm = torch.sqrt((vv * vv).sum(1) + 1e-8)
        a = self.mlp(torch.cat([s, vnorm], dim=1))
        avv, asv, ass = a[:, :f], a[:, f : 2 * f], a[:, 2 * f :]
        dv = avv.unsqueeze(1) * u
        ds = asv * (u * vv).sum(1) + ass
        return [s + ds, v + dv]


class _PaiNNTrunk(AtomicModel):
    """PaiNN's message-passing trunk, shared by architectures that differ only in the readout.

    A subclass builds `embedding`, `messages`, `updates`, `rbf` and `fcut` (these names are the
    state-dict keys saved models load by) and turns `trunk_features` into per-atom outputs.
    """

    features: int

    def build_trunk(
        self, cutoff: float, features: int, num_interactions: int, num_rbf: int
    ) -> None:
        """Set the trunk's hyperparameters and build its blocks (seeded draws: embedding, layers)."""
        self.cutoff = float(cutoff)
        self.num_rbf = int(num_rbf)
        self.features = int(features)
        # Creation order = the order the seeded initial weights are drawn in: keep it (the radial
        # basis and the cutoff draw nothing). The cutoff as given keeps BesselRBF bit-identical.
        self.embedding = ElementEmbedding(len(self.elements), features)
        self.messages = nn.ModuleList(
            [_Message(features, num_rbf) for _ in range(num_interactions)]
        )
        self.updates = nn.ModuleList([_Update(features) for _ in range(num_interactions)])
        self.rbf = BesselRBF(num_rbf, cutoff)
        self.fcut = CosineCutoff(cutoff)

    def trunk_features(
        self,
        species: Tensor,
        positions: Tensor,
        cell: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Scalar atom features (N, F) after message passing, from a half pair list."""
        pos = positions  # already in the model's dtype
        hi, hj, hshifts = pairs_within(pos, cell, batch, i, j, shifts, self.cutoff)
        # Messages flow both ways, so expand the half list into a full one. The vectors are built
        # from the full index list (not by concatenating +-vec): TorchScript's profiling executor
        # dropped the gradient through that torch.cat.
        i = torch.cat([hi, hj])
        j = torch.cat([hj, hi])
        vec = pair_vectors(pos, cell, batch, i, j, torch.cat([hshifts, -hshifts]))
        d = torch.sqrt((vec * vec).sum(1))
        unit = vec / d.unsqueeze(1)
        rbf = self.rbf.forward(d)  # forward(): see AtomicModel.network_inputs
        fcut = self.fcut.forward(d)
        n = species.shape[0]
        s = self.embedding(species).to(pos.dtype)
        v = torch.zeros(n, 3, self.features, dtype=pos.dtype, device=pos.device)
        for msg, upd in zip(self.messages, self.updates):
            s, v = msg(s, v, i, j, rbf, fcut, unit)
            s, v = upd(s, v)
        return s


@register_architecture(
    "painn",
    hyperparameters={
        "cutoff": Option("interaction cutoff radius, Angstrom", gt=0),
        "features": Option("width of the atom features", ge=1),
        "num_interactions": Option("message-passing layers", ge=1),
        "num_rbf": Option("radial basis functions", ge=1),
    },
)
class PaiNNModel(_PaiNNTrunk):
    """PaiNN-like equivariant message-passing potential; energies in eV, lengths in Angstrom."""

    cutoff: float
    elements: list[int]
    num_rbf: int

    def __init__(
        self,
        elements: Sequence[int],
        self_energies: dict[int, float] | None = None,
        cutoff: float = 5.0,
        features: int = 64,
        num_interactions: int = 3,
        num_rbf: int = 20,
        energy_scale: float = 1.0,
    ) -> None:
        """Build embedding, interaction blocks and readout; self_energies maps Z -> eV."""
        super().__init__(elements, self_energies, energy_scale)
        self.build_trunk(cutoff, features, num_interactions, num_rbf)
        self.readout = nn.Sequential(
            nn.Linear(features, features // 2), nn.SiLU(), nn.Linear(features // 2, 1)
        )

    def renamed_state_dict_keys(self) -> dict[str, str]:
        """Old -> new state-dict keys (the radial frequencies moved into the BesselRBF block)."""
        return {**super().renamed_state_dict_keys(), "freqs": "rbf.freqs"}

    def atomic_outputs_from_pairs(
        self,
        species: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Per-atom network outputs (N,) from a half pair list (pairs beyond cutoff ignored)."""
        s = self.trunk_features(species, positions, cell, batch, i, j, shifts)
        return self.readout(s).view(-1)
