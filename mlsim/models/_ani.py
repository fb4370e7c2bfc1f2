"""ANI-style potential: torchani's atomic environment vectors fed to one MLP per element."""

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

# torchani warns at import about CUDA extensions that a CPU install never has.
os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
from torchani.aev import AEVComputer  # noqa: E402
from torchani.neighbors import Neighbors  # noqa: E402

from mlsim._schema import Option  # noqa: E402
from mlsim.models._base import AtomicModel  # noqa: E402
from mlsim.models._graph import pair_vectors, pairs_within  # noqa: E402
from mlsim.models._registry import register_architecture  # noqa: E402

__all__ = ["ANIModel"]


def _mlp(n_in: int, hidden: Sequence[int], alpha: float) -> nn.Sequential:
    """Per-element network: Linear+CELU stack ending in one scalar (the atomic energy)."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.CELU(alpha)]
        n_in = h
    layers.append(nn.Linear(n_in, 1))
    return nn.Sequential(*layers)


@register_architecture(
    "ani",
    hyperparameters={
        "radial_cutoff": Option("radial AEV cutoff, Angstrom", gt=0),
        "angular_cutoff": Option("angular AEV cutoff, Angstrom", gt=0),
        "radial_start": Option("first radial shift, Angstrom", ge=0),
        "radial_eta": Option("radial Gaussian width parameter", gt=0),
        "radial_num_shifts": Option("radial shifts", ge=1),
        "angular_start": Option("first angular radial shift, Angstrom", ge=0),
        "angular_eta": Option("angular Gaussian width parameter", gt=0),
        "angular_zeta": Option("angular sharpness", gt=0),
        "angular_num_shifts": Option("angular radial shifts", ge=1),
        "angular_num_sections": Option("angular sections", ge=1),
        "hidden": Option("hidden layer widths of the element networks", ge=1),
        "celu_alpha": Option("CELU activation alpha", gt=0),
    },
)
class ANIModel(AtomicModel):
    """ANI-style model: torchani AEVs (radial + angular) and per-element MLPs; energies in eV."""

    cutoff: float
    elements: list[int]

    def __init__(
        self,
        elements: Sequence[int],
        self_energies: dict[int, float] | None = None,
        radial_cutoff: float = 5.2,
        angular_cutoff: float = 3.5,
        radial_start: float = 0.9,
        radial_eta: float = 16.0,
        radial_num_shifts: int = 16,
        angular_start: float = 0.9,
        angular_eta: float = 8.0,
        angular_zeta: float = 32.0,
        angular_num_shifts: int = 4,
        angular_num_sections: int = 8,
        hidden: Sequence[int] = (128, 96, 64),
        celu_alpha: float = 0.1,
        energy_scale: float = 1.0,
    ) -> None:
        """Build the AEV featurizer and networks; self_energies maps Z -> eV (fitted from data)."""
        super().__init__(elements, self_energies, energy_scale)
        self.cutoff = float(radial_cutoff)
        self.aev = AEVComputer.like_1x(
            num_species=len(self.elements),
            radial_start=radial_start,
            radial_cutoff=radial_cutoff,
            radial_eta=radial_eta,
            radial_num_shifts=radial_num_shifts,
            angular_start=angular_start,
            angular_cutoff=angular_cutoff,
            angular_eta=angular_eta,
            angular_zeta=angular_zeta,
            angular_num_shifts=angular_num_shifts,
            angular_num_sections=angular_num_sections,
        )
        n_feat = int(self.aev.out_dim)
        self.nets = nn.ModuleList([_mlp(n_feat, hidden, celu_alpha) for _ in self.elements])
        # AEV features span orders of magnitude; standardising them (statistics from the training
        # data, see fit_input_scaling) makes the MLPs train several times faster.
        self.register_buffer("aev_mean", torch.zeros(n_feat))
        self.register_buffer("aev_inv_std", torch.ones(n_feat))

    def features(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Element index (N,) and raw torchani AEV (N, D) of every atom."""
        i, j, shifts = self.half_pairs(positions, cell, pbc, batch)
        return self.features_from_pairs(numbers, positions, cell, pbc, batch, i, j, shifts)

    @torch.jit.export
    def features_from_pairs(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Element index and raw AEV from a precomputed half pair list (beyond cutoff ignored)."""
        species, pos, c = self.network_inputs(numbers, positions, cell)
        return species, self._aev(species, pos, c, batch, i, j, shifts)

    def _aev(
        self,
        species: Tensor,
        pos: Tensor,
        cell: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Raw torchani AEV (N, D) from element indices, positions/cell in the model's dtype, pairs."""
        i, j, shifts = pairs_within(pos, cell, batch, i, j, shifts, self.cutoff)
        vec = pair_vectors(pos, cell, batch, i, j, shifts)
        # torchani's convention: diff_vectors = R[first] - R[second].
        nb = Neighbors(torch.stack([i, j]), torch.linalg.vector_norm(vec, dim=1), -vec)
        return self.aev.compute_from_neighbors(species.unsqueeze(0), pos.unsqueeze(0), nb)[0]

    @torch.jit.unused
    def fit_input_scaling(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> None:
        """Set the AEV standardisation from sample structures (call once before training)."""
        with torch.no_grad():
            _, aev = self.features(numbers, positions, cell, pbc, batch)
            std = aev.std(0)
            self.aev_mean.copy_(aev.mean(0))
            # Features that never vary (absent element pairs) keep unit scale instead of 1/0.
            ok = std > 1e-6
            self.aev_inv_std.copy_(torch.where(ok, 1.0 / std.clamp_min(1e-6), torch.ones_like(std)))

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
        aev = self._aev(species, positions, cell, batch, i, j, shifts)
        aev = (aev - self.aev_mean) * self.aev_inv_std
        out = torch.zeros(species.shape[0], dtype=aev.dtype, device=aev.device)
        for k, net in enumerate(self.nets):
            sel = (species == k).nonzero().view(-1)
            if sel.numel() > 0:
                out = out.index_put((sel,), net(aev.index_select(0, sel)).view(-1))
        return out
