"""Exponential moving average of model weights (evaluated and shipped instead of raw weights)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weights, with a warm-up so early steps count."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        """Start the average at the current weights."""
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights into the average."""
        self.num_updates += 1
        # Warm-up (as in TensorFlow's EMA): the effective decay grows from 0.1 towards `decay`.
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        """Serializable state."""
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict()."""
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
