"""Hamiltonian Monte Carlo on an OpenMM System: the exact kernel for the fast (stiff) coordinates.

Velocities are drawn from Maxwell-Boltzmann, the state is moved by `n_steps` of velocity Verlet
(a CustomIntegrator, so the velocities read back are on-step and H is exact), and the move is
accepted with min(1, exp(-beta * dH)). Velocity Verlet is reversible and volume preserving, so this
leaves exp(-U/kT) exactly invariant for any step size.
"""

from __future__ import annotations

import numpy as np

from mlsim.units import (
    KB_EV_PER_K,
    KJ_PER_MOL_PER_EV,
    positions_from_openmm,
    positions_to_openmm,
)

__all__ = ["HMCKernel"]


class HMCKernel:
    """HMC move for positions in Angstrom; `step(x)` returns (x_new, accepted, U(x_new) in eV)."""

    def __init__(
        self,
        system,
        temperature: float = 300.0,
        dt_fs: float = 1.0,
        n_steps: int = 20,
        seed: int = 0,
        platform: str = "CPU",
    ) -> None:
        """Build a velocity-Verlet Context; the System must be unconstrained."""
        import openmm

        if system.getNumConstraints():
            raise ValueError("HMCKernel needs an unconstrained System (constraints=None)")
        if n_steps < 1 or dt_fs <= 0:
            raise ValueError("n_steps must be >= 1 and dt_fs > 0")
        self.n_steps = int(n_steps)
        self.kt_kj = KB_EV_PER_K * temperature * KJ_PER_MOL_PER_EV  # kJ/mol
        from openmm import unit

        self.masses = np.array(
            [
                system.getParticleMass(i).value_in_unit(unit.dalton)
                for i in range(system.getNumParticles())
            ]
        )
        integ = openmm.CustomIntegrator(dt_fs / 1000.0)
        integ.addComputePerDof("v", "v+0.5*dt*f/m")
        integ.addComputePerDof("x", "x+dt*v")
        integ.addComputePerDof("v", "v+0.5*dt*f/m")
        plat = openmm.Platform.getPlatformByName(platform)
        props = {"Threads": "1"} if platform == "CPU" else {}
        self._ctx = openmm.Context(system, integ, plat, props)
        self._rng = np.random.default_rng(seed)
        self.n_proposed = 0
        self.n_accepted = 0

    @property
    def acceptance_rate(self) -> float:
        """Fraction of accepted HMC moves so far."""
        return self.n_accepted / max(self.n_proposed, 1)

    def step(self, x_angstrom: np.ndarray) -> tuple[np.ndarray, bool, float]:
        """One HMC move from x (n, 3) Angstrom."""
        from openmm import unit

        x = np.asarray(x_angstrom, dtype=np.float64)
        v = self._rng.standard_normal(x.shape) * np.sqrt(self.kt_kj / self.masses)[:, None]
        self._ctx.setPositions(positions_to_openmm(x))
        self._ctx.setVelocities(v)
        e0 = self._ctx.getState(getEnergy=True).getPotentialEnergy()
        h0 = e0.value_in_unit(unit.kilojoule_per_mole) + 0.5 * (self.masses[:, None] * v**2).sum()
        self._ctx.getIntegrator().step(self.n_steps)
        st = self._ctx.getState(getEnergy=True, getPositions=True, getVelocities=True)
        u1 = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        v1 = st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
        h1 = u1 + 0.5 * (self.masses[:, None] * v1**2).sum()
        self.n_proposed += 1
        log_a = -(h1 - h0) / self.kt_kj
        if np.isfinite(log_a) and np.log(self._rng.random()) < log_a:
            self.n_accepted += 1
            x1 = positions_from_openmm(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
            return x1, True, u1 / KJ_PER_MOL_PER_EV
        return x, False, e0.value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
