"""Hamiltonian Monte Carlo: the exact kernel for the fast (stiff) coordinates.

Velocities are drawn from Maxwell-Boltzmann, the state is moved by `n_steps` of velocity Verlet,
and the move is accepted with min(1, exp(-beta * dH)). Velocity Verlet is reversible and volume
preserving, so this leaves exp(-U/kT) exactly invariant for any step size.

HMCKernel runs the integration inside OpenMM (a CustomIntegrator, so the velocities read back are
on-step and H is exact); TargetHMC does the same in NumPy for any target with forces (an mlsim
model); make_hmc picks the right one.
"""

from __future__ import annotations

import numpy as np

from mlsim.units import KB_EV_PER_K, time_to_openmm

__all__ = ["HMCKernel", "TargetHMC", "make_hmc"]


class _HMC:
    """What both HMC kernels share: the random stream, the Metropolis test and its counters."""

    kt: float  # eV

    def _start_chain(self, seed: int) -> None:
        """Seed the random stream and zero the counters."""
        self._rng = np.random.default_rng(seed)
        self.n_proposed = 0
        self.n_accepted = 0

    @property
    def acceptance_rate(self) -> float:
        """Fraction of accepted HMC moves so far."""
        return self.n_accepted / max(self.n_proposed, 1)

    def _accept(self, h0: float, h1: float) -> bool:
        """Metropolis test on the change of total energy (eV); counts the move."""
        self.n_proposed += 1
        log_a = -(h1 - h0) / self.kt
        if np.isfinite(log_a) and np.log(self._rng.random()) < log_a:
            self.n_accepted += 1
            return True
        return False


class HMCKernel(_HMC):
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

        from mlsim.openmm._engine import make_context

        if system.getNumConstraints():
            raise ValueError("HMCKernel needs an unconstrained System (constraints=None)")
        if n_steps < 1 or dt_fs <= 0:
            raise ValueError("n_steps must be >= 1 and dt_fs > 0")
        self.n_steps = int(n_steps)
        self.temperature = float(temperature)
        self.kt = KB_EV_PER_K * self.temperature  # eV
        # OpenMM stores masses in dalton (= amu, mlsim's mass unit): no conversion.
        self.masses = np.array(
            [system.getParticleMass(i)._value for i in range(system.getNumParticles())]
        )
        # A CustomIntegrator so that the velocities read back are on-step (exact H); its dt is
        # the only OpenMM-unit number here.
        integ = openmm.CustomIntegrator(float(time_to_openmm(dt_fs)))
        integ.addComputePerDof("v", "v+0.5*dt*f/m")
        integ.addComputePerDof("x", "x+dt*v")
        integ.addComputePerDof("v", "v+0.5*dt*f/m")
        self._ctx = make_context(system, integ, platform, threads=1 if platform == "CPU" else None)
        self._start_chain(seed)

    def step(
        self, x_angstrom: np.ndarray, u0: float | None = None
    ) -> tuple[np.ndarray, bool, float]:
        """One HMC move from x (n, 3) Angstrom; u0: U(x) in eV when the caller knows it."""
        from mlsim.openmm._engine import (
            kinetic_energy,
            kinetic_energy_of,
            maxwell_boltzmann,
            positions_of,
            potential_energy_of,
            set_positions,
            set_velocity_array,
        )

        x = np.asarray(x_angstrom, dtype=np.float64)
        set_positions(self._ctx, x)
        v = maxwell_boltzmann(self.masses, self.temperature, self._rng)
        set_velocity_array(self._ctx, v)
        # A known U(x) saves an energy evaluation (the chain passes it on from the last move).
        e0 = (
            float(u0) if u0 is not None else potential_energy_of(self._ctx.getState(getEnergy=True))
        )
        h0 = e0 + kinetic_energy(self.masses, v)
        self._ctx.getIntegrator().step(self.n_steps)
        st = self._ctx.getState(getEnergy=True, getPositions=True)
        u1 = potential_energy_of(st)
        if self._accept(h0, u1 + kinetic_energy_of(st)):
            return positions_of(st), True, u1
        return x, False, e0


class TargetHMC(_HMC):
    """HMC on any target with `energy_forces` (ASE units: Angstrom, eV, amu, fs), in NumPy.

    `step(x)` returns (x_new, accepted, U(x_new) in eV), like HMCKernel.
    """

    def __init__(
        self,
        target,
        masses: np.ndarray,
        dt_fs: float = 0.5,
        n_steps: int = 10,
        seed: int = 0,
    ) -> None:
        """Keep the target, the masses (amu) and the integration settings."""
        from ase import units

        if not hasattr(target, "energy_forces"):
            raise ValueError("TargetHMC needs a target with energy_forces (forces for HMC)")
        if n_steps < 1 or dt_fs <= 0:
            raise ValueError("n_steps must be >= 1 and dt_fs > 0")
        self.target = target
        self.masses = np.asarray(masses, dtype=np.float64)
        if self.masses.shape != (target.n_atoms,) or np.any(self.masses <= 0):
            raise ValueError(f"masses must be {target.n_atoms} positive values (amu)")
        self.n_steps = int(n_steps)
        # ASE's time unit makes amu * (Angstrom / time)^2 = eV, so F/m is an acceleration.
        self.dt = float(dt_fs) * units.fs
        self.kt = 1.0 / target.beta  # eV
        self._start_chain(seed)

    def step(
        self, x_angstrom: np.ndarray, u0: float | None = None
    ) -> tuple[np.ndarray, bool, float]:
        """One HMC move from x (n, 3) Angstrom (u0 is accepted for symmetry with HMCKernel; the
        forces at x are needed anyway)."""
        x0 = np.asarray(x_angstrom, dtype=np.float64)
        m = self.masses[:, None]
        v = self._rng.standard_normal(x0.shape) * np.sqrt(self.kt / m)
        u0, f = self.target.energy_forces(x0)
        h0 = u0 + 0.5 * (m * v**2).sum()
        x, u = x0.copy(), u0
        for _ in range(self.n_steps):
            v = v + 0.5 * self.dt * f / m
            x = x + self.dt * v
            u, f = self.target.energy_forces(x)
            if not np.isfinite(u):
                break
            v = v + 0.5 * self.dt * f / m
        if self._accept(h0, u + 0.5 * (m * v**2).sum()):
            return x, True, float(u)
        return x0, False, float(u0)


def make_hmc(
    target,
    masses: np.ndarray | None = None,
    dt_fs: float = 1.0,
    n_steps: int = 20,
    seed: int = 0,
):
    """The HMC kernel for `target`: inside OpenMM for an OpenMMTarget, else TargetHMC.

    masses (amu) default to the System's (OpenMM) or the standard atomic masses of
    `target.numbers` (ASE's table).
    """
    from mlsim.propagators._target import OpenMMTarget

    if isinstance(target, OpenMMTarget):
        return HMCKernel(
            target.system,
            target.temperature,
            dt_fs,
            n_steps,
            seed,
            getattr(target, "platform", "CPU"),
        )
    if masses is None:
        from ase.data import atomic_masses

        numbers = getattr(target, "numbers", None)
        if numbers is None:
            raise ValueError("give masses: the target does not know its atomic numbers")
        masses = atomic_masses[np.asarray(numbers, dtype=np.int64)]
    return TargetHMC(target, masses, dt_fs, n_steps, seed)
