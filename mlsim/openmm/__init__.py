"""mlsim models in OpenMM: TorchForce export, a PythonForce backend, openmm-ml plugin, and MD runs.

openmm-ml users write `MLPotential("mlsim", model="model.pt").createSystem(topology)` (or
createMixedSystem for ML/MM); the plugin is registered through the openmmml.potentials entry
point. `create_system` does the same without openmm-ml, `export_torchforce` writes the TorchScript
file that `openmmtorch.TorchForce` loads in a pure C++ deployment, and `run_md` drives a Langevin
simulation with reporters, checkpoints and blow-up detection (the `mlsim md` command);
`UncertaintyReporter` logs a committee's spread in any OpenMM script and stops above a threshold.
`build_mlmm_system` solvates a ligand (GAFF2/AM1-BCC from AmberTools) alone or in a protein and
makes it ML (mechanical embedding); `run_mlmm` equilibrates and runs it.
"""

from mlsim.openmm._forces import (
    BACKENDS,
    DEFAULT_BACKEND,
    ModelCallback,
    create_force,
    export_torchforce,
    import_openmmtorch,
)
from mlsim.openmm._gaff import (
    AmberToolsError,
    GaffTemplate,
    Ligand,
    ambertools_available,
    parameterize_ligand,
    read_ligand,
)
from mlsim.openmm._md import MDResult, SimulationBlowUp, reference_energy, run_md
from mlsim.openmm._mlmm import MLMMSystem, build_mlmm_system, equilibrate, run_mlmm
from mlsim.openmm._module import OpenMMEnergy, OpenMMEnergyForces, check_elements
from mlsim.openmm._openmmml import MLSimPotentialImplFactory
from mlsim.openmm._system import create_system, topology_from_structure
from mlsim.openmm._uncertainty import UncertaintyExceeded, UncertaintyReporter

__all__ = [
    "AmberToolsError",
    "BACKENDS",
    "DEFAULT_BACKEND",
    "GaffTemplate",
    "Ligand",
    "MDResult",
    "MLMMSystem",
    "MLSimPotentialImplFactory",
    "ModelCallback",
    "OpenMMEnergy",
    "OpenMMEnergyForces",
    "SimulationBlowUp",
    "UncertaintyExceeded",
    "UncertaintyReporter",
    "ambertools_available",
    "build_mlmm_system",
    "check_elements",
    "create_force",
    "create_system",
    "equilibrate",
    "export_torchforce",
    "import_openmmtorch",
    "parameterize_ligand",
    "read_ligand",
    "reference_energy",
    "run_md",
    "run_mlmm",
    "topology_from_structure",
]
