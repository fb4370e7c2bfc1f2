"""A blow-up guard for any ASE dynamics: `dyn.attach(MDGuard(atoms, dynamics=dyn), interval=10)`.

Each call checks the atoms (non-finite positions, starting bonds broken, new bonds formed, atoms
closer than min_distance, temperature above a bound, optionally total-energy drift) and either
remembers them as the last good state or raises SimulationBlowUp (mlsim._geometry_guard), the
same exception the OpenMM runner raises. The last good Atoms (with momenta) stay in
`guard.last_good` and, when `last_good_path` is given, are written there atomically before the
exception is raised, so a crashed run can be inspected or restarted from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mlsim._geometry_guard import (
    DEFAULT_BOND_FACTOR,
    DEFAULT_BREAK_FACTOR,
    DEFAULT_FORM_FACTOR,
    DEFAULT_MIN_DISTANCE,
    GeometryGuard,
    SimulationBlowUp,
    default_max_temperature,
)

__all__ = ["MDGuard", "SimulationBlowUp"]

# Without a target temperature, the bound for "runaway": far above any sensible MD temperature.
DEFAULT_ABSOLUTE_MAX_TEMPERATURE = 10_000.0  # K


class MDGuard:
    """ASE dynamics observer that stops a run whose state became unphysical (SimulationBlowUp).

    atoms: the Atoms the dynamics integrates (its current geometry defines the bond graph);
    dynamics: the ASE dynamics object, used for step numbers and times in messages (optional);
    temperature_k: the thermostat target; the bound is then default_max_temperature(target, dof)
    unless max_temperature (K) is given; without either the bound is 10,000 K; 0 disables it.
    max_energy_drift: eV/atom bound on abs(E_total - E_total(start)) (for NVE runs; None: off).
    geometry: check bonds and contacts (bond_factor, break_factor, form_factor, min_distance in
    Angstrom, see mlsim._geometry_guard). last_good_path: where to write the last good Atoms (any
    ase.io format, chosen by the extension; extxyz keeps momenta) when the run blows up.
    """

    def __init__(
        self,
        atoms: Any,
        dynamics: Any | None = None,
        temperature_k: float | None = None,
        max_temperature: float | None = None,
        max_energy_drift: float | None = None,
        geometry: bool = True,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        bond_factor: float = DEFAULT_BOND_FACTOR,
        break_factor: float = DEFAULT_BREAK_FACTOR,
        form_factor: float = DEFAULT_FORM_FACTOR,
        last_good_path: str | os.PathLike | None = None,
    ) -> None:
        """Build the bond graph from `atoms` as they are now; raise if already unphysical."""
        self.atoms = atoms
        self.dynamics = dynamics
        self.last_good_path = Path(last_good_path) if last_good_path is not None else None
        self.max_energy_drift = max_energy_drift
        dof = self._dof()
        if max_temperature is not None:
            self.max_temperature = float(max_temperature)
        elif temperature_k is not None:
            self.max_temperature = default_max_temperature(temperature_k, dof)
        else:
            self.max_temperature = DEFAULT_ABSOLUTE_MAX_TEMPERATURE
        if not np.isfinite(atoms.positions).all():
            raise SimulationBlowUp("the starting structure is already unphysical: NaN positions")
        self.geometry = (
            GeometryGuard.from_structure(
                atoms.numbers,
                atoms.positions,
                atoms.cell.array,
                atoms.pbc,
                bond_factor=bond_factor,
                break_factor=break_factor,
                form_factor=form_factor,
                min_distance=min_distance,
            )
            if geometry
            else None
        )
        self.calls = 0
        self.last_good: Any | None = None
        self.last_good_step: int | None = None
        self._e0: float | None = None
        problem = self.problem()
        if problem:
            raise SimulationBlowUp(f"the starting structure is already unphysical: {problem}")

    def _dof(self) -> int:
        """Degrees of freedom as ASE counts them for get_temperature (3N minus constraints)."""
        dof = 3 * len(self.atoms)
        for c in self.atoms.constraints:
            dof -= int(c.get_removed_dof(self.atoms))
        return max(dof, 1)

    def _step(self) -> int | None:
        """The dynamics' step count, when the dynamics is known."""
        return int(self.dynamics.nsteps) if self.dynamics is not None else None

    def _where(self, step: int | None) -> str:
        """'step 120 (60.0 fs)' or 'check 7' when no dynamics was given."""
        if step is None:
            return f"check {self.calls}"
        from ase import units

        dt = getattr(self.dynamics, "dt", None)
        return f"step {step}" + (f" ({step * dt / units.fs:.1f} fs)" if dt else "")

    def problem(self) -> str | None:
        """What is wrong with the atoms now (message naming atoms and values), or None."""
        atoms = self.atoms
        pos = atoms.positions
        if self.geometry is not None:
            msg = self.geometry.check(pos, atoms.cell.array, atoms.pbc)
            if msg:
                return msg
        elif not np.isfinite(pos).all():
            return "positions are not finite"
        momenta = atoms.get_momenta()
        if not np.isfinite(momenta).all():
            return "velocities are not finite"
        if self.max_temperature > 0 and len(atoms):
            t = float(atoms.get_temperature())
            if t > self.max_temperature:
                return f"temperature {t:.0f} K is above the {self.max_temperature:.0f} K bound"
        if self.max_energy_drift is not None and atoms.calc is not None:
            e = float(atoms.get_potential_energy() + atoms.get_kinetic_energy())
            if not np.isfinite(e):
                return f"total energy is {e}"
            if self._e0 is None:
                self._e0 = e
            drift = abs(e - self._e0) / max(len(atoms), 1)
            if drift > self.max_energy_drift:
                return (
                    f"total energy drifted by {drift:.3f} eV/atom from the start "
                    f"(bound {self.max_energy_drift:g} eV/atom)"
                )
        return None

    def __call__(self) -> None:
        """Check the atoms; keep them as the last good state or raise SimulationBlowUp."""
        self.calls += 1
        step = self._step()
        problem = self.problem()
        if problem is None:
            good = self.atoms.copy()
            good.calc = None
            good.info["mlsim_step"] = step if step is not None else -1
            good.info["units"] = "positions Angstrom, momenta ASE (amu*Angstrom/(ASE time unit))"
            self.last_good, self.last_good_step = good, step
            return
        where = self._where(step)
        if self.last_good is None:
            raise SimulationBlowUp(f"MD state unphysical at {where}: {problem}")
        saved = ""
        if self.last_good_path is not None:
            self.write_last_good(self.last_good_path)
            saved = f", written to {self.last_good_path}"
        good_where = self._where(self.last_good_step) if step is not None else "the previous check"
        raise SimulationBlowUp(
            f"MD blew up between {good_where} and {where}: {problem}. The last good state "
            f"({good_where}) is in guard.last_good{saved}; try a smaller timestep or check the "
            "model's training domain."
        )

    def write_last_good(self, path: str | os.PathLike) -> Path:
        """Write the last good Atoms to `path` atomically (format from the extension)."""
        import ase.io

        from mlsim._fileio import atomic_path

        if self.last_good is None:
            raise ValueError("no good state has been recorded yet")
        path = Path(path)
        with atomic_path(path, suffix=path.suffix) as tmp:
            ase.io.write(tmp, self.last_good)
        return path
