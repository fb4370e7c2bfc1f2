"""Boltzmann target densities pi(x) ~ exp(-U(x) / kT) evaluated with an OpenMM Context."""

from __future__ import annotations

import numpy as np

from mlsim.units import KB_EV_PER_K, energy_from_openmm, positions_to_openmm

__all__ = ["OpenMMTarget"]


class OpenMMTarget:
    """Potential energy U(x) in eV (x in Angstrom) of an OpenMM System, and beta = 1/kT in 1/eV.

    The System must have no constraints: the propagator proposes all 3n Cartesian coordinates,
    and the Metropolis-Hastings ratio needs the density on that full space. (With HBonds the
    Boltzmann density lives on a constraint manifold that a Cartesian flow cannot hit.)
    """

    def __init__(self, system, temperature: float = 300.0, platform: str = "CPU") -> None:
        """Create a single-thread Context for energy evaluations."""
        import openmm

        if system.getNumConstraints():
            raise ValueError(
                "target System has constraints; build it with constraints=None (flexible bonds)"
            )
        if temperature <= 0:
            raise ValueError("temperature must be positive (K)")
        self.n_atoms = system.getNumParticles()
        self.temperature = float(temperature)
        self.beta = 1.0 / (KB_EV_PER_K * temperature)
        plat = openmm.Platform.getPlatformByName(platform)
        props = {"Threads": "1"} if platform == "CPU" else {}
        self._ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), plat, props)

    def energy(self, x: np.ndarray) -> np.ndarray:
        """Potential energies (B,) in eV of positions (B, n, 3) or (n, 3) in Angstrom."""
        from openmm import unit

        x = np.asarray(x, dtype=np.float64)
        single = x.ndim == 2
        xb = x[None] if single else x
        if xb.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"positions must be (B, {self.n_atoms}, 3), got {x.shape}")
        out = np.empty(xb.shape[0])
        for b, xi in enumerate(xb):
            if not np.all(np.isfinite(xi)):
                out[b] = np.inf  # a non-finite proposal has zero target density
                continue
            self._ctx.setPositions(positions_to_openmm(xi))
            e = self._ctx.getState(getEnergy=True).getPotentialEnergy()
            out[b] = energy_from_openmm(e.value_in_unit(unit.kilojoule_per_mole))
        out[~np.isfinite(out)] = np.inf
        return out[0:1] if single else out
