"""Conditional RealNVP flow: an exact density q(y | context) on R^D (D = atoms x 3 here).

Layers (z is standard normal, y the output):
  1. conditional diagonal Gaussian: y0 = mu(c) + exp(log_sigma(c)) * z
  2. K affine coupling layers over atom-wise masks: y_B <- y_B * exp(s(y_A, c)) + t(y_A, c)
Every layer is invertible with a triangular Jacobian, so log q(y|c) = log N(z) - sum(log-scales).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ConditionalRealNVP"]


def _mlp(d_in: int, hidden: int, d_out: int, depth: int = 2) -> nn.Sequential:
    """A SiLU MLP with a zero-initialised last layer (so every flow layer starts as identity)."""
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    last = nn.Linear(d, d_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class ConditionalRealNVP(nn.Module):
    """Affine-coupling flow on D = dims_per_atom * n_atoms dims, conditioned on a context vector."""

    def __init__(
        self,
        n_atoms: int,
        d_context: int,
        hidden: int = 256,
        n_layers: int = 8,
        seed: int = 0,
        dims_per_atom: int = 3,
    ) -> None:
        """Build the flow; coupling masks are random atom halves (fixed by `seed`) and complements."""
        super().__init__()
        if n_atoms < 2 or n_layers < 2 or n_layers % 2:
            raise ValueError("need n_atoms >= 2 and an even n_layers >= 2")
        self.n_atoms = n_atoms
        self.dim = dims_per_atom * n_atoms
        self.base = _mlp(d_context, hidden, 2 * self.dim)
        g = torch.Generator().manual_seed(seed)
        masks = []
        for _ in range(n_layers // 2):
            perm = torch.randperm(n_atoms, generator=g)
            m = torch.zeros(n_atoms)
            m[perm[: n_atoms // 2]] = 1.0
            for mm in (m, 1.0 - m):
                masks.append(mm.repeat_interleave(dims_per_atom))
        self.register_buffer("masks", torch.stack(masks))
        self.couplings = nn.ModuleList(
            _mlp(self.dim + d_context, hidden, 2 * self.dim) for _ in range(len(masks))
        )
        # Bounded log-scales keep early training and long chains numerically tame.
        self.max_log_scale = 2.0

    def _scale_shift(
        self, k: int, y: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-scale and shift of coupling k, nonzero only on the transformed half."""
        m = self.masks[k]
        out = self.couplings[k](torch.cat([y * m, c], dim=-1))
        s, t = out.chunk(2, dim=-1)
        s = self.max_log_scale * torch.tanh(s / self.max_log_scale)
        return s * (1.0 - m), t * (1.0 - m)

    def _base(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std of the conditional Gaussian layer."""
        mu, log_sigma = self.base(c).chunk(2, dim=-1)
        return mu, 4.0 * torch.tanh(log_sigma / 4.0)

    def log_prob(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Exact log density of y (B, D) given context c (B, C)."""
        logdet = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for k in reversed(range(len(self.couplings))):
            s, t = self._scale_shift(k, y, c)
            y = (y - t) * torch.exp(-s)
            logdet = logdet + s.sum(-1)
        mu, log_sigma = self._base(c)
        z = (y - mu) * torch.exp(-log_sigma)
        logdet = logdet + log_sigma.sum(-1)
        log_n = -0.5 * (z**2).sum(-1) - 0.5 * self.dim * math.log(2.0 * math.pi)
        return log_n - logdet

    def sample(
        self, c: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one y per context row; return (y (B, D), log q(y | c) (B,))."""
        z = torch.randn(c.shape[0], self.dim, dtype=c.dtype, device=c.device, generator=generator)
        log_q = -0.5 * (z**2).sum(-1) - 0.5 * self.dim * math.log(2.0 * math.pi)
        mu, log_sigma = self._base(c)
        y = mu + torch.exp(log_sigma) * z
        log_q = log_q - log_sigma.sum(-1)
        for k in range(len(self.couplings)):
            s, t = self._scale_shift(k, y, c)
            y = y * torch.exp(s) + t
            log_q = log_q - s.sum(-1)
        return y, log_q
