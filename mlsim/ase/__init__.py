"""mlsim models in ASE: `MLCalculator(model)` for MD (VelocityVerlet, Langevin), optimisers and I/O.

`MDGuard` is a dynamics observer that stops a run whose state became unphysical (bonds broken or
formed, atoms too close, runaway temperature) with SimulationBlowUp, keeping the last good Atoms.
"""

from mlsim._geometry_guard import SimulationBlowUp
from mlsim.ase._calculator import MLCalculator
from mlsim.ase._guard import MDGuard

__all__ = ["MDGuard", "MLCalculator", "SimulationBlowUp"]
