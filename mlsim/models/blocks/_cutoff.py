"""Cutoff functions: weights (P,) that take pair contributions smoothly to zero at the cutoff."""

import math

import torch
from torch import Tensor, nn

__all__ = ["CosineCutoff", "PolynomialCutoff"]


class CosineCutoff(nn.Module):
    """0.5 (cos(pi d / cutoff) + 1): PaiNN's cutoff, 1 at d = 0 and 0 with zero slope at the cutoff.

    The cosine is periodic, so it is not zero beyond the cutoff: mlsim's models drop those pairs
    first (`pairs_within`), which costs less than masking here on every call.
    """

    cutoff: float

    def __init__(self, cutoff: float) -> None:
        """Cutoff radius in Angstrom."""
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, d: Tensor) -> Tensor:
        """Weights (P,) at distances d (P,)."""
        return 0.5 * (torch.cos(d * math.pi / self.cutoff) + 1.0)


class PolynomialCutoff(nn.Module):
    """Polynomial envelope of DimeNet/MACE (order p): smooth to order p at the cutoff, 0 beyond."""

    cutoff: float
    p: float

    def __init__(self, cutoff: float, p: int = 6) -> None:
        """Cutoff radius in Angstrom and the order p >= 1 of the envelope."""
        super().__init__()
        if p < 1:
            raise ValueError(f"PolynomialCutoff needs p >= 1, got {p}")
        self.cutoff = float(cutoff)
        self.p = float(p)

    def forward(self, d: Tensor) -> Tensor:
        """Weights (P,) at distances d (P,); exactly 0 at and beyond the cutoff."""
        p = self.p
        x = d / self.cutoff
        env = (
            1.0
            - 0.5 * (p + 1.0) * (p + 2.0) * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - 0.5 * p * (p + 1.0) * torch.pow(x, p + 2.0)
        )
        return env * (x < 1.0).to(d.dtype)
