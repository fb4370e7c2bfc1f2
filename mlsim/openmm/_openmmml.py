"""openmm-ml plugin: `MLPotential("mlsim", model="model.pt")` through the openmmml.potentials entry point.

openmmml imports every registered factory while openmmml.mlpotential itself is still being
imported, so this module must not import openmmml at the top (that would be circular whenever
mlsim is imported first). The factory is therefore duck-typed (openmmml only calls createImpl);
the MLPotentialImpl subclass lives in _openmmml_impl and is imported when the first one is made.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["MLSimPotentialImplFactory"]


class MLSimPotentialImplFactory:
    """openmm-ml factory for mlsim models (registered as "mlsim")."""

    def createImpl(  # noqa: N802 - openmm-ml's method name
        self,
        name: str,
        model: torch.nn.Module | str | os.PathLike | None = None,
        backend: str | None = None,
        **args: Any,
    ) -> Any:
        """Create the MLPotentialImpl; `model` is a model.pt path or an mlsim model object."""
        from mlsim.openmm._openmmml_impl import MLSimPotentialImpl

        if model is None:
            raise ValueError('MLPotential("mlsim") needs model=: a model.pt path or an mlsim model')
        return MLSimPotentialImpl(name, model, backend=backend, **args)
