"""mlsim models in OpenMM: TorchForce export, a PythonForce backend, openmm-ml plugin, and MD runs.

openmm-ml users write `MLPotential("mlsim", model="model.pt").createSystem(topology)` (or
createMixedSystem for ML/MM); the plugin is registered through the openmmml.potentials entry
point. `create_system` does the same without openmm-ml, `export_torchforce` writes the TorchScript
file that `openmmtorch.TorchForce` loads in a pure C++ deployment, and `run_md` drives a Langevin
simulation with reporters, checkpoints and blow-up detection (the `mlsim md` command);
`UncertaintyReporter` logs a committee's spread in any OpenMM script and stops above a threshold.
`build_mlmm_system` solvates a ligand (GAFF2/AM1-BCC from AmberTools) alone or in a protein and
makes it ML (mechanical embedding); `run_mlmm` equilibrates and runs it. The building blocks
(the MD engine layer `_engine`, GAFF parameterisation, the model wrappers) stay importable from
their private modules.

Each name is imported on first use, so `import mlsim.openmm` (and the engine layer, which
sampling and the test systems use) does not load torch until a model is involved.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> private module that defines it
_API = {
    "MDResult": "_md",
    "MLMMSystem": "_mlmm",
    "SimulationBlowUp": "_md",
    "UncertaintyExceeded": "_uncertainty",
    "UncertaintyReporter": "_uncertainty",
    "build_mlmm_system": "_mlmm",
    "create_force": "_forces",
    "create_system": "_system",
    "export_torchforce": "_forces",
    "import_openmmtorch": "_forces",
    "parameterize_ligand": "_gaff",
    "read_ligand": "_gaff",
    "run_md": "_md",
    "run_mlmm": "_mlmm",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    """Import a public name from its private module on first use."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, for tab completion."""
    return sorted(__all__)
