"""OpenMM MD with an mlsim model: Langevin (or NVE), reporters, checkpoints and blow-up detection.

The loop advances in chunks of `report_interval` steps and inspects every chunk's end state
*before* it is reported, so a blown-up frame never reaches the trajectory: NaN, a force above
max_force, a temperature above max_temperature (NVT), a total-energy drift above
max_energy_drift (NVE), or a broken/formed covalent bond or two atoms closer than min_distance
(mlsim._geometry_guard; an ML model that left its domain often shows no NaN at all: atoms fly
beyond the cutoff, feel no force and keep going). The simulation then stops, the last good state
is written (XML + checkpoint) and SimulationBlowUp names the steps between which it happened.

Checkpoints are OpenMM's own (positions, velocities, step count, RNG state) written atomically;
checkpoint.json records their SHA-256 (written before the checkpoint itself, with the previous
one, so a kill between the two writes is told apart from a corrupt file). On resume the
trajectory and state.csv are cut back to the checkpoint's step before appending, so a run killed
at any time and resumed has every frame and row exactly once.

Every run folder has `<trajectory>.json` with the time step, the frame spacing and the units of
each file (mlsim analyze reads the frame spacing from it).

Energies in state.csv are relative to the model's per-element self energies (the sum over the ML
atoms, recorded as reference_energy_eV in `<trajectory>.json`): an ML model's absolute energy is
dominated by those constants (ethanol: about -400,000 kJ/mol), which hide every change a reader
looks for. The model's absolute potential energy stays in its own column. ensemble "npt" adds a
Monte Carlo barostat (periodic systems; the box and density go to state.csv). run_md also runs a
prebuilt System (ML/MM from mlsim.openmm.build_mlmm_system) given with its Topology.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsim import units
from mlsim._fileio import atomic_path, atomic_write, write_bytes, write_json, write_text
from mlsim._geometry_guard import GeometryGuard, SimulationBlowUp, default_max_temperature
from mlsim.data import Structure
from mlsim.openmm._engine import (
    degrees_of_freedom,
    langevin_integrator,
    make_simulation,
    set_barostat,
    set_positions,
    set_velocities,
    set_velocity_array,
    temperature_of,
    verlet_integrator,
)
from mlsim.openmm._forces import DEFAULT_BACKEND
from mlsim.openmm._system import create_system, topology_from_structure

__all__ = ["MDResult", "SimulationBlowUp", "metadata_path", "reference_energy", "run_md"]

# A force above this (eV/A) on any atom means the model left its training domain for good:
# chemical forces stay below ~20 eV/A even for strained geometries.
DEFAULT_MAX_FORCE = 100.0
# NVE: |E_total - E_total(start)| above this (eV/atom) is a failed integration, not drift. A good
# model at 0.5 fs drifts ~1e-4 eV/atom/ps; 0.2 eV/atom is the kinetic energy of ~1500 K.
DEFAULT_NVE_ENERGY_DRIFT = 0.2
_CSV_UNITS = (
    "Step: steps; Time: ps; energies: kJ/mol, Potential and Total relative to the model's "
    "per-element self energies (reference_energy_eV here), Absolute Potential Energy as the "
    "model and force field give it; Temperature: K; Box Volume: nm^3; Density: g/mL; "
    "Speed: ns/day"
)
ABSOLUTE_COLUMN = "Absolute Potential Energy (kJ/mole)"
# state.csv's columns (StateDataReporter flags); npt runs add the box volume and the density.
_CSV_COLUMNS = {
    "step": True,
    "time": True,
    "potentialEnergy": True,
    "kineticEnergy": True,
    "totalEnergy": True,
    "temperature": True,
    "speed": True,
}
DEFAULT_BAROSTAT_INTERVAL = 25  # steps between Monte Carlo volume moves (OpenMM's default)


@dataclass
class MDResult:
    """What an MD run produced: files and speed."""

    steps: int
    time_ps: float
    steps_per_second: float
    trajectory: Path
    log: Path
    checkpoint: Path
    final_state: Path
    metadata: Path | None = None


def metadata_path(trajectory: str | os.PathLike) -> Path:
    """The JSON file next to a trajectory that holds its time step, frame spacing and units."""
    trajectory = Path(trajectory)
    return trajectory.with_name(trajectory.name + ".json")


def _write_atomic(path: Path, data: bytes | str) -> None:
    """Write bytes or text atomically (mlsim._fileio)."""
    if isinstance(data, bytes):
        write_bytes(path, data)
    else:
        write_text(path, data)


@dataclass
class _Limits:
    """The thresholds a state is checked against (OpenMM units where noted)."""

    max_force_kj: float  # kJ/mol/nm
    dof: int
    n_atoms: int
    max_temperature: float  # K; 0: off
    max_energy_drift: float  # eV/atom; 0: off
    reference_energy_ev: float | None  # total energy the drift is measured from
    guard: GeometryGuard | None
    periodic: bool
    guard_atoms: np.ndarray | None = None  # particles the guard sees (None: all; no virtual sites)


def _total_energy_ev(state: Any) -> float:
    """Potential + kinetic energy of a state, eV."""
    e = state.getPotentialEnergy()._value + state.getKineticEnergy()._value
    return float(units.energy_from_openmm(e))


def _problem(state: Any, limits: _Limits) -> str | None:
    """Describe what is wrong with a state (NaN, force, heat, drift, geometry), or None."""
    energy = state.getPotentialEnergy()._value
    if not np.isfinite(energy):
        return f"potential energy is {energy}"
    pos = np.asarray(state.getPositions(asNumpy=True)._value)
    if not np.isfinite(pos).all():
        return "positions became NaN"
    forces = np.asarray(state.getForces(asNumpy=True)._value)
    if not np.isfinite(forces).all():
        return "forces became NaN"
    problems = []
    fmax = np.sqrt((forces**2).sum(1))
    worst = int(fmax.argmax())
    if fmax[worst] > limits.max_force_kj:
        f_ev = float(units.forces_from_openmm(fmax[worst]))
        problems.append(
            f"force on atom {worst} is {f_ev:.1f} eV/A "
            f"(threshold {units.forces_from_openmm(limits.max_force_kj):.3g})"
        )
    if limits.guard is not None:
        box = None
        if limits.periodic:
            box = units.positions_from_openmm(
                np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value)
            )
        seen = pos if limits.guard_atoms is None else pos[limits.guard_atoms]
        msg = limits.guard.check(units.positions_from_openmm(seen), box, limits.periodic)
        if msg and limits.guard_atoms is not None:
            msg += " (atom numbers leave out the virtual sites)"
        if msg:
            problems.append(msg)
    if limits.max_temperature > 0:
        t = temperature_of(state, limits.dof)
        if t > limits.max_temperature:
            problems.append(
                f"temperature {t:.0f} K is above the {limits.max_temperature:.0f} K bound"
            )
    if limits.max_energy_drift > 0 and limits.reference_energy_ev is not None:
        drift = abs(_total_energy_ev(state) - limits.reference_energy_ev) / limits.n_atoms
        if drift > limits.max_energy_drift:
            problems.append(
                f"total energy drifted by {drift:.3f} eV/atom from the start of the run "
                f"(bound {limits.max_energy_drift:g} eV/atom)"
            )
    return "; ".join(problems) if problems else None


# --- checkpoints -----------------------------------------------------------------------------


def _checkpoint_meta_path(chk_path: Path) -> Path:
    """checkpoint.chk -> checkpoint.json (its SHA-256 record)."""
    return chk_path.with_suffix(".json")


def _sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def _save_checkpoint(chk_path: Path, data: bytes, step: int) -> None:
    """Write the checkpoint and its hash record (record first: see the module docstring)."""
    meta_path = _checkpoint_meta_path(chk_path)
    previous: list[str] = []
    if meta_path.is_file():
        try:
            previous = json.loads(meta_path.read_text())["sha256"][:1]
        except (ValueError, KeyError, TypeError, IndexError):
            previous = []
    write_json(
        meta_path,
        {
            "checkpoint": chk_path.name,
            "step": int(step),
            "sha256": [_sha256(data), *previous],
            "note": "SHA-256 of the newest checkpoint, then of the one before (a kill between "
            "writing this record and the checkpoint leaves the older one in place)",
        },
    )
    write_bytes(chk_path, data)


def _load_checkpoint(sim: Any, chk_path: Path) -> None:
    """Load checkpoint.chk into the simulation; ValueError naming the file if it is unusable."""
    import openmm

    data = chk_path.read_bytes()
    meta_path = _checkpoint_meta_path(chk_path)
    if meta_path.is_file():
        try:
            known = json.loads(meta_path.read_text())["sha256"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read the checkpoint record {meta_path}: {exc}") from exc
        if _sha256(data) not in known:
            raise ValueError(
                f"checkpoint {chk_path} is corrupt: its SHA-256 matches none recorded in "
                f"{meta_path} when it was written ({len(data)} bytes); restore it from a backup "
                "or start a new run"
            )
    try:
        sim.context.loadCheckpoint(data)
    except openmm.OpenMMException as exc:
        raise ValueError(
            f"cannot load checkpoint {chk_path} ({len(data)} bytes): {exc}. It is corrupt, or "
            "was written for another system, platform or OpenMM version"
        ) from exc


# --- resume: cut the outputs back to the checkpoint ------------------------------------------


def _trim_dcd(path: Path, last_step: int) -> int:
    """Cut a DCD back to its frames at steps <= last_step (frame count in the header, length)."""
    with open(path, "r+b") as fh:
        head = fh.read(100)
        if len(head) < 100 or head[4:8] != b"CORD" or struct.unpack("<i", head[:4])[0] != 84:
            raise ValueError(f"cannot resume: {path} is not a DCD file (bad header)")
        first_step, interval = struct.unpack("<2i", head[12:20])
        has_box = struct.unpack("<i", head[48:52])[0] != 0
        title_bytes = struct.unpack("<i", head[92:96])[0]
        fh.seek(104 + title_bytes)
        (n_atoms,) = struct.unpack("<i", fh.read(4))
        header_len = 112 + title_bytes
        frame_bytes = (56 if has_box else 0) + 3 * (8 + 4 * n_atoms)
        size = fh.seek(0, os.SEEK_END)
        n_complete = max(size - header_len, 0) // frame_bytes
        n_keep = 0 if last_step < first_step else (last_step - first_step) // max(interval, 1) + 1
        if n_keep > n_complete:
            raise ValueError(
                f"cannot resume: {path} has {n_complete} complete frames, but the checkpoint is "
                f"at step {last_step}, which needs {n_keep} (first frame at step {first_step}, "
                f"one every {interval} steps); the trajectory lost frames"
            )
        fh.truncate(header_len + n_keep * frame_bytes)
        fh.seek(8)
        fh.write(struct.pack("<i", n_keep))
        if n_keep:
            fh.seek(20)
            fh.write(struct.pack("<i", first_step + (n_keep - 1) * interval))
        fh.flush()
        os.fsync(fh.fileno())
    return n_keep


def _trim_xtc(path: Path, last_step: int, report_interval: int) -> int:
    """Rewrite an XTC without its frames at steps > last_step (XTC frames carry their step)."""
    from openmm.app.internal.xtc_utils import read_xtc, xtc_write_frame

    if path.stat().st_size == 0:
        return 0
    try:
        coords, box, times, steps = read_xtc(str(path).encode("utf-8"))
    except Exception as exc:  # the C reader raises plain Exceptions on damaged files
        raise ValueError(f"cannot resume: cannot read trajectory {path}: {exc}") from exc
    keep = np.flatnonzero(np.asarray(steps) <= last_step)
    if len(keep):
        expected = (last_step - int(steps[0])) // report_interval + 1
        if len(keep) < expected:
            raise ValueError(
                f"cannot resume: {path} has {len(keep)} frames up to step {last_step}, the "
                f"checkpoint's step, but needs {expected}; the trajectory lost frames"
            )
    if len(keep) == len(steps):
        return len(keep)
    with atomic_path(path, suffix=".xtc") as tmp:
        tmp.unlink()  # xtc_write_frame creates the file and appends to it
        name = str(tmp).encode("utf-8")
        for k in keep:
            xtc_write_frame(
                name,
                np.ascontiguousarray(coords[:, :, k], dtype=np.float32),
                np.ascontiguousarray(box[:, :, k], dtype=np.float32),
                np.float32(times[k]),
                np.int32(steps[k]),
            )
        if not len(keep):
            tmp.touch()
    return len(keep)


def _trim_csv(path: Path, last_step: int) -> int:
    """Drop state.csv rows after last_step (and a half-written last row); returns rows kept."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    n_fields = None
    out, rows = [], 0
    for line in lines:
        if line.startswith("#"):
            n_fields = line.count(",") + 1
            out.append(line)
            continue
        if not line.endswith("\n") or (n_fields is not None and line.count(",") + 1 != n_fields):
            continue  # cut short by a kill while it was written
        try:
            step = int(line.split(",", 1)[0])
        except ValueError:
            continue
        if step <= last_step:
            out.append(line)
            rows += 1
    if out != lines:
        write_text(path, "".join(out))
    return rows


def reference_energy(model: torch.nn.Module | None, numbers: Any) -> float:
    """Sum of the model's per-element self energies (eV) over atoms `numbers`; 0 without any.

    The model's energy of isolated atoms: what state.csv's relative energies are measured from.
    Read from the model's `self_energy` buffers (an ensemble: the mean over its members).
    """
    if model is None:
        return 0.0
    elements = [int(z) for z in getattr(model, "elements", [])]
    found = [
        b.detach().double().cpu().numpy()
        for name, b in model.named_buffers()
        if name.split(".")[-1] == "self_energy" and b.numel() == len(elements)
    ]
    if not elements or not found:
        return 0.0
    per_element = dict(zip(elements, np.mean(found, axis=0).tolist(), strict=True))
    return float(sum(per_element.get(int(z), 0.0) for z in np.asarray(numbers).reshape(-1)))


def _state_reporter(path: Path, interval: int, offset_kj: float, npt: bool, append: bool) -> Any:
    """OpenMM's StateDataReporter with energies relative to `offset_kj` and an absolute column."""
    from openmm import app

    class RelativeStateDataReporter(app.StateDataReporter):
        """Potential/Total Energy minus the self-energy reference; the absolute value beside."""

        def _constructHeaders(self) -> list[str]:  # noqa: N802 - OpenMM's method name
            headers = super()._constructHeaders()
            self._pe = headers.index("Potential Energy (kJ/mole)")
            self._te = headers.index("Total Energy (kJ/mole)")
            return [*headers[: self._te + 1], ABSOLUTE_COLUMN, *headers[self._te + 1 :]]

        def _constructReportValues(self, simulation: Any, state: Any) -> list:  # noqa: N802
            values = super()._constructReportValues(simulation, state)
            absolute = values[self._pe]
            values[self._pe] = absolute - offset_kj
            values[self._te] = values[self._te] - offset_kj
            return [*values[: self._te + 1], absolute, *values[self._te + 1 :]]

    return RelativeStateDataReporter(
        str(path), interval, **_CSV_COLUMNS, volume=npt, density=npt, append=append
    )


class _SubsetState:
    """The ML atoms' view of an OpenMM State (positions subset, same box) for the committee monitor."""

    def __init__(self, state: Any, atoms: np.ndarray) -> None:
        """Wrap `state`; `atoms` are the ML atoms' indices."""
        self._state, self._atoms = state, atoms

    def getPositions(self, asNumpy: bool = True) -> Any:  # noqa: N802, N803 - OpenMM's names
        """Positions of the ML atoms (nm Quantity)."""
        pos = self._state.getPositions(asNumpy=True)
        return pos[self._atoms]

    def getPeriodicBoxVectors(self, asNumpy: bool = True) -> Any:  # noqa: N802, N803
        """The full system's box."""
        return self._state.getPeriodicBoxVectors(asNumpy=True)


def run_md(
    model: torch.nn.Module | str | os.PathLike | None,
    structure: Structure,
    out_dir: str | os.PathLike,
    steps: int,
    timestep_fs: float = 0.5,
    temperature_k: float = 300.0,
    friction_per_ps: float = 1.0,
    ensemble: str = "nvt",
    backend: str = DEFAULT_BACKEND,
    platform: str = "CPU",
    report_interval: int = 100,
    checkpoint_interval: int = 1000,
    trajectory: str = "trajectory.dcd",
    max_force: float = DEFAULT_MAX_FORCE,
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
    max_temperature: float | None = None,
    max_energy_drift: float | None = None,
    geometry_check: bool = True,
    min_distance: float = 0.5,
    max_uncertainty: float | None = None,
    pressure_bar: float = 1.0,
    barostat_interval: int = DEFAULT_BAROSTAT_INTERVAL,
    system: Any | None = None,
    topology: Any | None = None,
    ml_atoms: Any | None = None,
    velocities: np.ndarray | None = None,
) -> MDResult:
    """Run `steps` MD steps of `structure` with the model; files go to out_dir.

    ensemble "nvt": LangevinMiddleIntegrator(temperature, friction); "nve": VerletIntegrator;
    "npt": Langevin plus a MonteCarloBarostat at pressure_bar (bar), a volume move every
    barostat_interval steps (fully periodic structures only).
    system/topology: a prebuilt OpenMM System for `structure`'s atoms (e.g. ML/MM from
    build_mlmm_system; an "npt" run adds or resets its barostat) with the Topology written to
    topology.pdb; the model then only serves the committee monitor and the energy reference, and
    may be None (an all-MM run). ml_atoms: the atoms the model covers (None: all). Virtual sites
    of a prebuilt system (4-site water) hold any number in `structure`: the checks skip them.
    velocities: starting velocities (n, 3) in Angstrom/fs, e.g. an equilibration's last ones
    (None: drawn at temperature_k with seed); ignored on resume (the checkpoint has them).
    Writes trajectory (.dcd or .xtc) with `<trajectory>.json` (time step, frame spacing, units),
    state.csv (energies, temperature, speed), topology.pdb, checkpoint.chk (+ checkpoint.json) and
    final_state.xml. With resume, continues from checkpoint.chk up to `steps` total steps, after
    cutting the trajectory and state.csv back to the checkpoint's step.

    Checked at every report (SimulationBlowUp after saving the last good state): NaN; forces above
    max_force (eV/A); temperature above max_temperature (K; None: 5x the target for NVT, off for
    NVE; 0: off); the absolute total-energy drift above max_energy_drift (eV/atom; None: 0.2 for NVE, off
    for NVT, where the thermostat exchanges energy; 0: off); with geometry_check, covalent bonds
    of the starting structure broken or new ones formed and atoms closer than min_distance (A).
    """
    import openmm
    from openmm import app, unit
    from tqdm import tqdm

    if steps < 0 or report_interval <= 0 or checkpoint_interval <= 0:
        raise ValueError("steps must be >= 0 and the intervals > 0")
    if timestep_fs <= 0 or timestep_fs > 5:
        raise ValueError(f"timestep {timestep_fs} fs is outside (0, 5] fs")
    if ensemble not in ("nvt", "nve", "npt"):
        raise ValueError(f"ensemble must be 'nvt', 'npt' or 'nve', got {ensemble!r}")
    if ensemble == "npt":
        if not (structure.periodic and structure.pbc.all()):
            raise ValueError(
                "ensemble 'npt' needs a fully periodic structure (a cell and pbc in x, y and z); "
                "the barostat changes the box"
            )
        if not (pressure_bar > 0 and barostat_interval >= 1):
            raise ValueError(
                f"npt needs pressure_bar > 0 and barostat_interval >= 1, got {pressure_bar} bar "
                f"and {barostat_interval} steps"
            )
    if (system is None) != (topology is None):
        raise ValueError("a prebuilt system needs its topology too (and the other way round)")
    if system is not None and system.getNumParticles() != len(structure):
        raise ValueError(
            f"the prebuilt system has {system.getNumParticles()} particles but the structure "
            f"{len(structure)} atoms"
        )
    if model is None and system is None:
        raise ValueError("run_md needs a model (or a prebuilt system)")
    for name, value in (
        ("max_temperature", max_temperature),
        ("max_energy_drift", max_energy_drift),
    ):
        if value is not None and not value >= 0:
            raise ValueError(f"{name} must be >= 0 (0 turns the check off), got {value}")
    suffix = Path(trajectory).suffix.lower()
    if suffix not in (".dcd", ".xtc"):
        raise ValueError(f"trajectory must end in .dcd or .xtc, got {trajectory!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    traj_path, log_path = out / trajectory, out / "state.csv"
    unc_path = out / "uncertainty.csv"
    meta_path = metadata_path(traj_path)
    chk_path, final_path, bad_path = (
        out / "checkpoint.chk",
        out / "final_state.xml",
        out / "last_good_state.xml",
    )
    if resume and not chk_path.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {chk_path}")
    if not resume and traj_path.exists():
        raise ValueError(
            f"{traj_path} exists; pass resume to continue that run or choose another folder"
        )
    old_meta: dict[str, Any] = {}
    if resume and meta_path.is_file():
        try:
            old_meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise ValueError(f"cannot resume: cannot read {meta_path}: {exc}") from exc
        for key, now in (("timestep_fs", timestep_fs), ("report_interval_steps", report_interval)):
            if key in old_meta and not np.isclose(old_meta[key], now, rtol=1e-9, atol=0):
                raise ValueError(
                    f"cannot resume: the run in {out} used {key} = {old_meta[key]}, not {now}; "
                    "resume with the same value, since the trajectory's frames must stay evenly "
                    "spaced (start a new folder to change it)"
                )

    from mlsim.openmm._module import resolve_model

    # Loaded once here: the force and the uncertainty monitor share it.
    system_model = resolve_model(model) if model is not None else None
    if system is None:
        topology = topology_from_structure(structure)
        system = create_system(system_model, structure, backend=backend)
    ml_index = np.arange(len(structure)) if ml_atoms is None else np.asarray(ml_atoms, dtype=int)
    offset_ev = reference_energy(system_model, structure.numbers[ml_index])
    # An "nvt"/"nve" run switches a prebuilt system's barostat off.
    set_barostat(system, pressure_bar, temperature_k, barostat_interval if ensemble == "npt" else 0)
    if ensemble in ("nvt", "npt"):
        integrator = langevin_integrator(timestep_fs, temperature_k, friction_per_ps, seed)
    else:
        integrator = verlet_integrator(timestep_fs)
    sim = make_simulation(topology, system, integrator, platform)
    periodic = structure.periodic
    if resume:
        _load_checkpoint(sim, chk_path)
    else:
        # A prebuilt system's default box may be older than the structure's (equilibrated).
        set_positions(sim.context, structure.positions, structure.cell if periodic else None)
        if velocities is None:
            set_velocities(sim.context, temperature_k, seed)
        else:
            set_velocity_array(sim.context, velocities)
        with atomic_write(out / "topology.pdb") as fh:  # PDB coordinates are in Angstrom
            app.PDBFile.writeFile(
                topology, units.positions_to_openmm(structure.positions) * unit.nanometer, fh
            )
    done = sim.currentStep
    if done > steps:
        raise ValueError(f"the checkpoint is already at step {done}, beyond the requested {steps}")
    if resume:
        # A run killed after its last checkpoint wrote frames and rows past it; they are written
        # again from the checkpoint, so drop them first (else they appear twice).
        if traj_path.exists():
            if suffix == ".dcd":
                _trim_dcd(traj_path, done)
            else:
                _trim_xtc(traj_path, done, report_interval)
        if log_path.exists():
            _trim_csv(log_path, done)
        if unc_path.exists():
            _trim_csv(unc_path, done)

    monitor = None
    if hasattr(system_model, "member_energies"):
        # A committee: log its spread every report; stop above max_uncertainty (eV/A) if given.
        from mlsim.openmm._uncertainty import CSV_HEADER, UncertaintyMonitor

        monitor = UncertaintyMonitor(
            system_model, structure.numbers[ml_index], periodic, max_uncertainty
        )
        if not (resume and unc_path.exists()):
            write_text(unc_path, CSV_HEADER)
    elif max_uncertainty is not None:
        raise ValueError("max_uncertainty needs a committee model (an ensemble)")
    append = resume and traj_path.exists()
    traj_cls = app.DCDReporter if suffix == ".dcd" else app.XTCReporter
    offset_kj = float(units.energy_to_openmm(offset_ev))
    csv_append = resume and log_path.exists()
    if csv_append and ABSOLUTE_COLUMN not in log_path.read_text().split("\n", 1)[0]:
        offset_kj = offset_ev = 0.0  # a run started before the relative column: keep its format
        csv_reporter = app.StateDataReporter(
            str(log_path), report_interval, **_CSV_COLUMNS, append=True
        )
    else:
        csv_reporter = _state_reporter(
            log_path, report_interval, offset_kj, ensemble == "npt", csv_append
        )
    reporters = [traj_cls(str(traj_path), report_interval, append=append), csv_reporter]

    def snapshot() -> Any:
        return sim.context.getState(
            getPositions=True,
            getVelocities=True,
            getEnergy=True,
            getForces=True,
            getParameters=True,
            enforcePeriodicBox=periodic,
        )

    good = snapshot()
    good_step = done
    dof = degrees_of_freedom(system)
    if max_temperature is None:
        max_temperature = default_max_temperature(temperature_k, dof) if ensemble != "nve" else 0.0
    if max_energy_drift is None:
        max_energy_drift = DEFAULT_NVE_ENERGY_DRIFT if ensemble == "nve" else 0.0
    reference = old_meta.get("reference_total_energy_eV")
    # Virtual sites (4-site water's M: massless, no element) ride on their atoms; a prebuilt
    # system's Structure holds a placeholder number for them, and the geometry guard skips them.
    real = np.flatnonzero([not system.isVirtualSite(i) for i in range(system.getNumParticles())])
    limits = _Limits(
        max_force_kj=float(units.forces_to_openmm(max_force)),
        dof=dof,
        n_atoms=len(structure),
        max_temperature=float(max_temperature),
        max_energy_drift=float(max_energy_drift),
        reference_energy_ev=float(reference) if reference is not None else _total_energy_ev(good),
        # The bond graph is always the starting structure's, also on resume.
        guard=GeometryGuard.from_structure(
            structure.numbers[real],
            structure.positions[real],
            structure.cell if periodic else None,
            structure.pbc if periodic else False,
            min_distance=min_distance,
        )
        if geometry_check
        else None,
        periodic=periodic,
        guard_atoms=real if len(real) < system.getNumParticles() else None,
    )
    problem = _problem(good, limits)
    if problem:
        where = f"the checkpoint {chk_path} (step {done})" if resume else "the starting structure"
        raise SimulationBlowUp(f"{where} is already unphysical for this model: {problem}")
    frame_ps = report_interval * timestep_fs / units.FS_PER_PS
    first_step = int(old_meta.get("first_frame_step", report_interval))
    write_json(
        meta_path,
        {
            "trajectory": traj_path.name,
            "format": suffix[1:],
            "timestep_fs": timestep_fs,
            "report_interval_steps": report_interval,
            "frame_interval_ps": frame_ps,
            "first_frame_step": first_step,
            "first_frame_time_ps": first_step * timestep_fs / units.FS_PER_PS,
            "ensemble": ensemble,
            "temperature_K": temperature_k,
            "friction_per_ps": friction_per_ps if ensemble != "nve" else None,
            "pressure_bar": pressure_bar if ensemble == "npt" else None,
            "barostat_interval_steps": barostat_interval if ensemble == "npt" else None,
            "reference_energy_eV": offset_ev,
            "reference_energy": "sum of the model's per-element self energies over the ML atoms; "
            "state.csv's Potential and Total Energy are relative to it",
            "ml_atoms": None if ml_atoms is None else len(ml_index),
            "n_atoms": len(structure),
            "reference_total_energy_eV": limits.reference_energy_ev,
            "units": {
                traj_path.name: "positions in Angstrom"
                if suffix == ".dcd"
                else "positions in nm, time in ps",
                log_path.name: _CSV_UNITS,
                unc_path.name: "committee spread: eV/A per atom (forces), eV (energy); "
                "written for committee models only",
                "topology.pdb": "Angstrom",
                "final_state.xml, last_good_state.xml": "OpenMM State XML: nm, ps, kJ/mol",
                chk_path.name: "OpenMM binary checkpoint (SHA-256 in checkpoint.json)",
                "this file": "times in fs (timestep) and ps, energies in eV, temperature in K",
            },
        },
    )
    good_checkpoint = sim.context.createCheckpoint()
    last_checkpoint_step = done
    t0, start_step = time.perf_counter(), done
    bar = tqdm(
        total=steps, initial=done, desc="MD", unit="step", file=sys.stderr, disable=not progress
    )
    try:
        while sim.currentStep < steps:
            n = min(report_interval - sim.currentStep % report_interval, steps - sim.currentStep)
            sim.step(n)
            state = snapshot()
            problem = _problem(state, limits)
            spread = None
            if monitor is not None and not problem:
                spread = monitor.evaluate(
                    state if ml_atoms is None else _SubsetState(state, ml_index)
                )
                problem = monitor.problem(spread)
            if problem:
                bad_step = sim.currentStep
                sim.context.loadCheckpoint(good_checkpoint)
                _save_checkpoint(chk_path, good_checkpoint, good_step)
                _write_atomic(bad_path, openmm.XmlSerializer.serialize(good))
                raise SimulationBlowUp(
                    f"simulation blew up between steps {good_step} and {bad_step}: "
                    f"{problem}. The last good state (step {good_step}) is in {bad_path} "
                    f"and {chk_path}; try a smaller timestep or check the model's training domain."
                )
            good, good_step = state, sim.currentStep
            good_checkpoint = sim.context.createCheckpoint()
            if sim.currentStep % report_interval == 0:
                for r in reporters:
                    r.report(sim, state)
                if spread is not None:
                    t_ps = sim.currentStep * timestep_fs / units.FS_PER_PS
                    with open(unc_path, "a", encoding="utf-8") as fh:  # a log, like state.csv
                        fh.write(monitor.row(sim.currentStep, t_ps, spread))
            if (
                sim.currentStep - last_checkpoint_step >= checkpoint_interval
                or sim.currentStep == steps
            ):
                _save_checkpoint(chk_path, good_checkpoint, sim.currentStep)
                last_checkpoint_step = sim.currentStep
            bar.update(n)
    finally:
        bar.close()
        for r in reporters:
            # The reporters keep their files open; close them so the data reaches disk.
            fh = getattr(r, "_out", None)
            if hasattr(fh, "close"):
                fh.close()
    elapsed = time.perf_counter() - t0
    _write_atomic(final_path, openmm.XmlSerializer.serialize(good))
    n_run = sim.currentStep - start_step
    return MDResult(
        steps=sim.currentStep,
        time_ps=float(sim.currentStep * units.time_to_openmm(timestep_fs)),
        steps_per_second=n_run / elapsed if elapsed > 0 else float("nan"),
        trajectory=traj_path,
        log=log_path,
        checkpoint=chk_path,
        final_state=final_path,
        metadata=meta_path,
    )
