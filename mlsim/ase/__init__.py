"""mlsim models in ASE: `MLCalculator(model)` for MD (VelocityVerlet, Langevin), optimisers and I/O."""

from mlsim.ase._calculator import MLCalculator

__all__ = ["MLCalculator"]
