"""Committee uncertainty in OpenMM runs: a reporter for any OpenMM script, and `mlsim md`'s monitor.

The force OpenMM integrates is the committee mean; the spread needs the members one by one, so it
is evaluated here, on the reported states only (every report interval, not every step), from the
positions OpenMM hands over. Values in ASE units: eV/A for the per-atom force spread, eV for the
energy spread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsim import units
from mlsim._geometry_guard import SimulationBlowUp

__all__ = ["UncertaintyExceeded", "UncertaintyMonitor", "UncertaintyReporter"]

CSV_HEADER = (
    "#step,time_ps,max_force_uncertainty_eV_per_A,mean_force_uncertainty_eV_per_A,"
    "worst_atom,energy_uncertainty_eV\n"
)


class UncertaintyExceeded(SimulationBlowUp):
    """The committee's per-atom force spread passed the threshold: the run left the model's data."""


class UncertaintyMonitor:
    """Evaluate a committee's spread for OpenMM positions (nm) of a system with these atoms."""

    def __init__(
        self,
        model: torch.nn.Module | str | os.PathLike,
        numbers: np.ndarray,
        pbc: bool = False,
        threshold: float | None = None,
    ) -> None:
        """Load the committee; threshold (eV/A) on the max per-atom force spread, None: log only."""
        from mlsim.openmm._module import check_elements, model_dtype, resolve_model

        self.model = resolve_model(model, "cpu")
        if not hasattr(self.model, "member_energies"):
            raise ValueError(
                "uncertainty needs a committee model (train with `ensemble: 4` or more)"
            )
        self.numbers = torch.as_tensor(np.asarray(numbers), dtype=torch.long)
        check_elements(self.model, self.numbers.tolist())
        self.dtype = model_dtype(self.model)
        self.pbc = bool(pbc)
        if threshold is not None and not (np.isfinite(threshold) and threshold > 0):
            raise ValueError(f"uncertainty threshold must be > 0 eV/A, got {threshold}")
        self.threshold = threshold

    def evaluate(self, state: Any) -> dict[str, float]:
        """Spread for an OpenMM State with positions: max/mean per-atom force (eV/A), energy (eV)."""
        from mlsim.models._uncertainty import committee_properties

        pos = units.positions_from_openmm(np.asarray(state.getPositions(asNumpy=True)._value))
        cell = np.zeros((3, 3))
        if self.pbc:
            box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value)
            cell = units.positions_from_openmm(box)
        n = len(self.numbers)
        out = committee_properties(
            self.model,
            self.numbers,
            torch.as_tensor(pos, dtype=self.dtype),
            torch.as_tensor(cell, dtype=self.dtype).unsqueeze(0),
            torch.full((1, 3), self.pbc),
            torch.zeros(n, dtype=torch.long),
            min_distance=None,  # the geometry guard reports close contacts with better words
        )
        spread = out["forces_std"].double().numpy()
        worst = int(spread.argmax())
        return {
            "max": float(spread[worst]),
            "mean": float(spread.mean()),
            "worst_atom": worst,
            "energy": float(out["energy_std"][0]),
        }

    def problem(self, values: dict[str, float]) -> str | None:
        """The message when the max spread passed the threshold, else None."""
        if self.threshold is None or values["max"] <= self.threshold:
            return None
        from mlsim._geometry_guard import atom_label

        atom = atom_label(int(values["worst_atom"]), int(self.numbers[int(values["worst_atom"])]))
        return (
            f"the committee's force uncertainty on atom {atom} is {values['max']:.3f} eV/A, "
            f"above the {self.threshold:g} eV/A threshold: the run left the model's training data"
        )

    @staticmethod
    def row(step: int, time_ps: float, values: dict[str, float]) -> str:
        """One CSV line (see CSV_HEADER)."""
        return (
            f"{step},{time_ps:.6f},{values['max']:.6g},{values['mean']:.6g},"
            f"{values['worst_atom']},{values['energy']:.6g}\n"
        )


class UncertaintyReporter:
    """OpenMM reporter: log the committee's force/energy spread and stop above a threshold.

    Use in any OpenMM script whose System carries an mlsim committee force::

        reporter = UncertaintyReporter("model.pt", "uncertainty.csv", 100, numbers, threshold=0.5)
        simulation.reporters.append(reporter)
        simulation.step(100_000)   # raises UncertaintyExceeded once the spread passes 0.5 eV/A

    The state before the one that passed the threshold is kept in `last_good_state` (positions
    and velocities, an OpenMM State) so the caller can save or restart from it.
    """

    def __init__(
        self,
        model: torch.nn.Module | str | os.PathLike,
        file: str | os.PathLike,
        report_interval: int,
        numbers: np.ndarray,
        threshold: float | None = None,
        pbc: bool = False,
    ) -> None:
        """Open `file` (CSV, overwritten) and load the committee; threshold in eV/A."""
        if report_interval < 1:
            raise ValueError("report_interval must be >= 1")
        self.monitor = UncertaintyMonitor(model, numbers, pbc, threshold)
        self.interval = int(report_interval)
        self.path = Path(file)
        self._out = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - a reporter's log
        self._out.write(CSV_HEADER)
        self.last_good_state: Any = None
        self.max_seen = 0.0

    def describeNextReport(self, simulation: Any) -> dict[str, Any]:  # noqa: N802 - OpenMM API
        """Ask OpenMM for positions and velocities every `report_interval` steps."""
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": ["positions", "velocities"]}

    def report(self, simulation: Any, state: Any) -> None:
        """Evaluate the spread, write a row, raise UncertaintyExceeded above the threshold."""
        values = self.monitor.evaluate(state)
        self.max_seen = max(self.max_seen, values["max"])
        time_ps = float(state.getTime()._value)
        self._out.write(self.monitor.row(simulation.currentStep, time_ps, values))
        self._out.flush()
        problem = self.monitor.problem(values)
        if problem:
            self._out.close()
            raise UncertaintyExceeded(
                f"step {simulation.currentStep}: {problem}; the last good state is "
                "reporter.last_good_state"
            )
        self.last_good_state = state

    def close(self) -> None:
        """Close the CSV file."""
        if not self._out.closed:
            self._out.close()
