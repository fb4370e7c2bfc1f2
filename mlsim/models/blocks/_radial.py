"""Radial bases: expand pair distances (P,) into features (P, num_rbf)."""

import math

import torch
from torch import Tensor, nn

__all__ = ["BesselRBF", "GaussianRBF"]


class BesselRBF(nn.Module):
    """sin(n pi d / cutoff) / d for n = 1..num_rbf (PaiNN's basis; unnormalised, d > 0)."""

    num_rbf: int
    cutoff: float

    def __init__(self, num_rbf: int, cutoff: float) -> None:
        """Fix the frequencies n pi / cutoff (a buffer: they follow .double() and .to(device))."""
        super().__init__()
        self.num_rbf = int(num_rbf)
        self.cutoff = float(cutoff)
        # The cutoff as given (not float(cutoff)) keeps the frequencies bit-identical to those of
        # models saved before this block existed.
        self.register_buffer(
            "freqs", torch.arange(1, num_rbf + 1, dtype=torch.float32) * math.pi / cutoff
        )

    def forward(self, d: Tensor) -> Tensor:
        """Basis values (P, num_rbf) at distances d (P,), in d's dtype."""
        freqs = self.freqs.to(d.dtype)
        return torch.sin(d.unsqueeze(1) * freqs) / d.unsqueeze(1)


class GaussianRBF(nn.Module):
    """exp(-(d - mu_k)^2 / (2 w^2)) with num_rbf centres mu_k evenly spaced on [start, cutoff]."""

    num_rbf: int
    cutoff: float

    def __init__(self, num_rbf: int, cutoff: float, start: float = 0.0) -> None:
        """Centres on [start, cutoff]; the width w is their spacing (SchNet's choice)."""
        super().__init__()
        if num_rbf < 2 or not cutoff > start:
            raise ValueError(
                f"GaussianRBF needs num_rbf >= 2 and cutoff > start, got {num_rbf}, {cutoff}, {start}"
            )
        self.num_rbf = int(num_rbf)
        self.cutoff = float(cutoff)
        centres = torch.linspace(float(start), float(cutoff), int(num_rbf))
        width = float(centres[1] - centres[0])
        self.register_buffer("centres", centres)
        self.register_buffer("coeff", torch.tensor(-0.5 / width**2))

    def forward(self, d: Tensor) -> Tensor:
        """Basis values (P, num_rbf) at distances d (P,), in d's dtype."""
        diff = d.unsqueeze(1) - self.centres.to(d.dtype)
        return torch.exp(self.coeff.to(d.dtype) * diff * diff)
