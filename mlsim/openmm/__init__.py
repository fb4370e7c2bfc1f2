"""mlsim models in OpenMM: TorchForce export, a PythonForce backend, openmm-ml plugin, and MD runs.

openmm-ml users write `MLPotential("mlsim", model="model.pt").createSystem(topology)` (or
createMixedSystem for ML/MM); the plugin is registered through the openmmml.potentials entry
point. `create_system` does the same without openmm-ml, `export_torchforce` writes the TorchScript
file that `openmmtorch.TorchForce` loads in a pure C++ deployment, and `run_md` drives a Langevin
simulation with reporters, checkpoints and blow-up detection (the `mlsim md` command);
`UncertaintyReporter` logs a committee's spread in any OpenMM script and stops above a threshold.
"""

from mlsim.openmm._forces import (
    BACKENDS,
    DEFAULT_BACKEND,
    ModelCallback,
    create_force,
    export_torchforce,
    import_openmmtorch,
)
from mlsim.openmm._md import MDResult, SimulationBlowUp, run_md
from mlsim.openmm._module import OpenMMEnergy, OpenMMEnergyForces, check_elements
from mlsim.openmm._openmmml import MLSimPotentialImplFactory
from mlsim.openmm._system import create_system, topology_from_structure
from mlsim.openmm._uncertainty import UncertaintyExceeded, UncertaintyReporter

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "MDResult",
    "MLSimPotentialImplFactory",
    "ModelCallback",
    "OpenMMEnergy",
    "OpenMMEnergyForces",
    "SimulationBlowUp",
    "UncertaintyExceeded",
    "UncertaintyReporter",
    "check_elements",
    "create_force",
    "create_system",
    "export_torchforce",
    "import_openmmtorch",
    "run_md",
    "topology_from_structure",
]
