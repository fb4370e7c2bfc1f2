"""mlsim: machine-learned potentials and learned propagators for OpenMM and ASE simulations.

The top level holds the dozen names a simulation script needs; each is imported on first use, so
`import mlsim` stays cheap (no torch, no OpenMM until asked for)::

    import mlsim
    data = mlsim.read("labelled.extxyz")
    model = mlsim.load_model("model.pt")
    atoms.calc = mlsim.MLCalculator("model.pt")

In OpenMM, `openmmml.MLPotential("mlsim", model="model.pt")` is the plug-in entry point.
Everything else lives in the subpackages (mlsim.data, mlsim.models, mlsim.train, mlsim.learn,
mlsim.ase, mlsim.openmm, mlsim.propagators, mlsim.analysis).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any

try:
    __version__ = _dist_version("mlsim")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# name -> module that defines it
_API = {
    "Structure": "mlsim.data",
    "Dataset": "mlsim.data",
    "read": "mlsim.data",
    "write": "mlsim.data",
    "label": "mlsim.data",
    "load_model": "mlsim.models",
    "compute_properties": "mlsim.models",
    "train": "mlsim.train",
    "load_config": "mlsim.train",
    "learn": "mlsim.learn",
    "load_learn_config": "mlsim.learn",
    "MLCalculator": "mlsim.ase",
    "neighbor_list": "mlsim.neighbors",
    "run_md": "mlsim.openmm",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Import a top-level API name on first use."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'mlsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, for tab completion."""
    return sorted(__all__)
