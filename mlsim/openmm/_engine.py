"""The MD engine layer: OpenMM platforms, integrators, barostats, Contexts and evaluations.

Every mlsim code path that runs OpenMM (run_md, ML/MM, sampling, test-system MD, propagator
targets, the benchmarks) builds its OpenMM objects here, so a platform name, a thread count, a
seed or a unit is handled in one place. Arguments and results are in mlsim's units: fs, K, bar,
Angstrom, eV, eV/Angstrom; friction in 1/ps, as `run_md` and `mlsim md --friction` take it (the
usual way to quote a Langevin collision rate). OpenMM's ps, nm and kJ/mol appear only inside this
module and are converted through mlsim.units.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlsim import units

__all__ = [
    "GPU_PLATFORMS",
    "PlatformError",
    "available_platforms",
    "degrees_of_freedom",
    "evaluate",
    "forces_of",
    "get_platform",
    "kinetic_energy",
    "kinetic_energy_of",
    "langevin_integrator",
    "make_context",
    "make_simulation",
    "maxwell_boltzmann",
    "minimize",
    "positions_of",
    "potential_energy_of",
    "set_barostat",
    "set_positions",
    "set_velocities",
    "set_velocity_array",
    "temperature_of",
    "velocities_of",
    "verlet_integrator",
    "box_of",
]

GPU_PLATFORMS = ("CUDA", "OpenCL", "HIP", "Metal")
_DEVICE_PROPERTY = {"CUDA": "DeviceIndex", "OpenCL": "DeviceIndex", "HIP": "DeviceIndex"}


class PlatformError(ValueError):
    """An OpenMM platform that is not installed, cannot start on this machine, or bad settings."""


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms this installation can use (e.g. ['Reference', 'CPU'])."""
    import openmm

    return [
        openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())
    ]


def _load_failures(name: str) -> list[str]:
    """OpenMM's plugin load errors that concern platform `name` (why a GPU platform is missing)."""
    import openmm

    return [msg for msg in openmm.Platform.getPluginLoadFailures() if name.lower() in msg.lower()]


def get_platform(
    name: str = "CPU", threads: int | None = None, device: int | str | None = None
) -> tuple[Any, dict[str, str]]:
    """Return the OpenMM platform `name` and its properties; PlatformError if it cannot be used.

    threads: worker threads of the CPU platform (None: OpenMM's default, all cores or
    OPENMM_CPU_THREADS); the other platforms ignore it. device: the GPU index (or a comma-separated
    list) for CUDA, OpenCL and HIP; an error on the CPU and Reference platforms.
    """
    import openmm

    if threads is not None and (
        isinstance(threads, bool) or int(threads) != threads or threads < 1
    ):
        raise PlatformError(f"threads must be a whole number >= 1, got {threads!r}")
    try:
        platform = openmm.Platform.getPlatformByName(name)
    except openmm.OpenMMException:
        known = available_platforms()
        msg = f"OpenMM platform {name!r} is not available on this machine (available: "
        msg += ", ".join(known) + ")"
        match = next((k for k in GPU_PLATFORMS if k.lower() == str(name).lower()), None)
        if match and match != name:
            msg += f"; platform names are case-sensitive: did you mean {match!r}?"
        elif match:
            failures = _load_failures(name)
            msg += (
                f"; {name} needs a GPU, its driver and OpenMM's {name} plugin (for CUDA: pip "
                "install openmm[cuda12]); use platform 'CPU' on a machine without one"
            )
            if failures:
                msg += ". OpenMM could not load: " + "; ".join(failures)
        raise PlatformError(msg) from None
    props: dict[str, str] = {}
    if threads is not None and name == "CPU":
        props["Threads"] = str(int(threads))
    if device is not None:
        key = _DEVICE_PROPERTY.get(name)
        if key is None:
            raise PlatformError(
                f"a device ({device!r}) can only be chosen on a GPU platform "
                f"({', '.join(_DEVICE_PROPERTY)}), not on {name!r}"
            )
        props[key] = str(device)
    return platform, props


def _start_failure(name: str, props: dict[str, str], exc: Exception) -> PlatformError:
    """The error for a GPU platform that is installed but could not create a Context."""
    where = f" ({', '.join(f'{k}={v}' for k, v in props.items())})" if props else ""
    return PlatformError(
        f"OpenMM platform {name!r}{where} could not start: {exc}. Is a GPU present and its "
        "driver loaded? Use platform 'CPU' on a machine without one"
    )


def make_context(
    system: Any,
    integrator: Any | None = None,
    platform: str = "CPU",
    threads: int | None = None,
    device: int | str | None = None,
) -> Any:
    """Create an openmm.Context; integrator None: a 1 fs Verlet one (for evaluations only)."""
    import openmm

    plat, props = get_platform(platform, threads, device)
    if integrator is None:
        integrator = verlet_integrator(1.0)
    try:
        return openmm.Context(system, integrator, plat, props)
    except openmm.OpenMMException as exc:
        if platform in GPU_PLATFORMS:
            raise _start_failure(platform, props, exc) from exc
        raise


def make_simulation(
    topology: Any,
    system: Any,
    integrator: Any,
    platform: str = "CPU",
    threads: int | None = None,
    device: int | str | None = None,
) -> Any:
    """Create an openmm.app.Simulation (for reporters, checkpoints and minimisation)."""
    import openmm
    from openmm import app

    plat, props = get_platform(platform, threads, device)
    try:
        return app.Simulation(topology, system, integrator, plat, props)
    except openmm.OpenMMException as exc:
        if platform in GPU_PLATFORMS:
            raise _start_failure(platform, props, exc) from exc
        raise


# --- integrators and barostat ----------------------------------------------------------------


def _check_timestep(timestep_fs: float) -> float:
    """The time step in ps after checking it is a positive finite number of fs."""
    if not np.isfinite(timestep_fs) or timestep_fs <= 0:
        raise ValueError(f"timestep must be a positive number of fs, got {timestep_fs}")
    return float(units.time_to_openmm(timestep_fs))


def langevin_integrator(
    timestep_fs: float,
    temperature_k: float,
    friction_per_ps: float = 1.0,
    seed: int | None = None,
) -> Any:
    """LangevinMiddleIntegrator at temperature_k (K), friction in 1/ps; seed None: OpenMM picks one."""
    import openmm

    if not (np.isfinite(temperature_k) and temperature_k >= 0):
        raise ValueError(f"temperature must be >= 0 K, got {temperature_k}")
    if not (np.isfinite(friction_per_ps) and friction_per_ps >= 0):
        raise ValueError(f"friction must be >= 0 (1/ps), got {friction_per_ps}")
    integrator = openmm.LangevinMiddleIntegrator(
        float(temperature_k), float(friction_per_ps), _check_timestep(timestep_fs)
    )
    if seed is not None:
        integrator.setRandomNumberSeed(int(seed))
    return integrator


def verlet_integrator(timestep_fs: float) -> Any:
    """VerletIntegrator (NVE, velocity Verlet) with a time step in fs."""
    import openmm

    return openmm.VerletIntegrator(_check_timestep(timestep_fs))


def set_barostat(system: Any, pressure_bar: float, temperature_k: float, interval: int) -> None:
    """Add (or reset) the system's MonteCarloBarostat; interval (steps) 0 switches it off."""
    import openmm

    for force in system.getForces():
        if isinstance(force, openmm.MonteCarloBarostat):
            force.setDefaultPressure(float(pressure_bar))  # bar is OpenMM's pressure unit
            force.setDefaultTemperature(float(temperature_k))
            force.setFrequency(int(interval))
            return
    if interval:
        system.addForce(
            openmm.MonteCarloBarostat(float(pressure_bar), float(temperature_k), int(interval))
        )


# --- state in and out, in ASE units ----------------------------------------------------------


def set_positions(context: Any, positions: ArrayLike, cell: ArrayLike | None = None) -> None:
    """Set positions (n, 3) in Angstrom, and the box (3, 3) in Angstrom first when given."""
    if cell is not None:
        context.setPeriodicBoxVectors(*units.positions_to_openmm(cell))
    context.setPositions(units.positions_to_openmm(positions))


def set_velocities(context: Any, temperature_k: float, seed: int | None = None) -> None:
    """Draw Maxwell-Boltzmann velocities at temperature_k (K); seed None: OpenMM picks one."""
    context.setVelocitiesToTemperature(
        float(temperature_k), *([int(seed)] if seed is not None else [])
    )


def set_velocity_array(context: Any, velocities: ArrayLike) -> None:
    """Set velocities (n, 3) in Angstrom/fs (e.g. an equilibration's last ones)."""
    v = np.asarray(velocities, dtype=float)
    n = context.getSystem().getNumParticles()
    if v.shape != (n, 3) or not np.isfinite(v).all():
        raise ValueError(f"velocities must be finite with shape ({n}, 3), got {v.shape}")
    context.setVelocities(units.positions_to_openmm(v) * units.FS_PER_PS)  # A/fs -> nm/ps


def maxwell_boltzmann(
    masses_amu: ArrayLike, temperature_k: float, rng: np.random.Generator
) -> np.ndarray:
    """Velocities (n, 3) in Angstrom/fs drawn from Maxwell-Boltzmann at temperature_k (K)."""
    m = np.asarray(masses_amu, dtype=float)
    if m.ndim != 1 or np.any(m <= 0):
        raise ValueError("masses must be positive values (amu), one per atom")
    # sqrt(kT/m) with kT in kJ/mol and m in g/mol is in nm/ps (OpenMM's units): convert once.
    kt_kj = units.KB_EV_PER_K * float(temperature_k) * units.KJ_PER_MOL_PER_EV
    v_nm_ps = rng.standard_normal((len(m), 3)) * np.sqrt(kt_kj / m)[:, None]
    return units.positions_from_openmm(v_nm_ps) / units.FS_PER_PS


def kinetic_energy(masses_amu: ArrayLike, velocities: ArrayLike) -> float:
    """Kinetic energy in eV of velocities (n, 3) in Angstrom/fs with masses in amu."""
    v_nm_ps = units.positions_to_openmm(velocities) * units.FS_PER_PS
    m = np.asarray(masses_amu, dtype=float)[:, None]
    return float(units.energy_from_openmm(0.5 * (m * v_nm_ps**2).sum()))


def minimize(context: Any, tolerance_ev_per_a: float = 0.01, max_iterations: int = 0) -> None:
    """Local energy minimisation until the largest force is below tolerance (eV/Angstrom)."""
    import openmm

    # OpenMM's tolerance is a force in kJ/mol/nm.
    tol = float(units.forces_to_openmm(float(tolerance_ev_per_a)))
    openmm.LocalEnergyMinimizer.minimize(context, tol, int(max_iterations))


def positions_of(state: Any) -> np.ndarray:
    """Positions (n, 3) in Angstrom of an OpenMM State."""
    return units.positions_from_openmm(np.asarray(state.getPositions(asNumpy=True)._value))


def box_of(state: Any) -> np.ndarray:
    """Periodic box vectors (3, 3) in Angstrom of an OpenMM State."""
    return units.positions_from_openmm(np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value))


def velocities_of(state: Any) -> np.ndarray:
    """Velocities (n, 3) in Angstrom/fs of an OpenMM State."""
    v = units.positions_from_openmm(np.asarray(state.getVelocities(asNumpy=True)._value))
    return v / units.FS_PER_PS  # per ps -> per fs


def potential_energy_of(state: Any) -> float:
    """Potential energy in eV of an OpenMM State."""
    return float(units.energy_from_openmm(state.getPotentialEnergy()._value))


def kinetic_energy_of(state: Any) -> float:
    """Kinetic energy in eV of an OpenMM State."""
    return float(units.energy_from_openmm(state.getKineticEnergy()._value))


def forces_of(state: Any) -> np.ndarray:
    """Forces (n, 3) in eV/Angstrom of an OpenMM State."""
    return units.forces_from_openmm(np.asarray(state.getForces(asNumpy=True)._value))


def evaluate(
    context: Any, positions: ArrayLike | None = None, cell: ArrayLike | None = None
) -> tuple[float, np.ndarray]:
    """Potential energy (eV) and forces (n, 3; eV/Angstrom), at new positions/box (Angstrom) if given."""
    if positions is not None:
        set_positions(context, positions, cell)
    elif cell is not None:
        context.setPeriodicBoxVectors(*units.positions_to_openmm(cell))
    state = context.getState(getEnergy=True, getForces=True)
    return potential_energy_of(state), forces_of(state)


def degrees_of_freedom(system: Any) -> int:
    """Degrees of freedom as OpenMM's StateDataReporter counts them (massive particles, constraints)."""
    import openmm

    dof = sum(3 for i in range(system.getNumParticles()) if system.getParticleMass(i)._value > 0)
    dof -= system.getNumConstraints()
    if any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces()):
        dof -= 3
    return max(dof, 1)


def temperature_of(state: Any, dof: int) -> float:
    """Instantaneous temperature (K) of a State from its kinetic energy and the degrees of freedom."""
    return 2.0 * kinetic_energy_of(state) / (dof * units.KB_EV_PER_K)
