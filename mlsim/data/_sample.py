"""Configuration sampling: Langevin MD with any ASE calculator or an OpenMM force field, or thinning a trajectory.

engine="openmm" is cheap classical pre-sampling (e.g. amber14/tip3pfb.xml water, flexible or
rigid, optionally NPT): its frames carry geometry and cell only, to be labelled afterwards by the
expensive method; the force field's own energy is kept in info["mm_energy_eV"] for reference,
never as a label.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlsim.data._dataset import Dataset
from mlsim.data._structure import Structure

__all__ = ["sample", "sample_trajectory"]


def sample(
    start: Structure | Any,
    calculator: Any | Callable[[], Any] | None,
    temperatures: Sequence[float],
    n_frames: int,
    *,
    every: int = 50,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.01,
    equilibration_fs: float = 1000.0,
    seed: int = 0,
    progress: bool = True,
    engine: str = "ase",
    forcefield: str | Sequence[str] | None = None,
    pressure_bar: float | None = None,
    rigid_water: bool = False,
    cutoff: float = 9.0,
    platform: str = "CPU",
) -> Dataset:
    """Run one Langevin trajectory per temperature and keep every `every`-th step after equilibration.

    `start` is a Structure or ase.Atoms; `calculator` an ASE calculator or a zero-argument factory
    (called once per trajectory). Each trajectory's random stream is seeded by (seed, temperature
    index), so runs are reproducible; frames record temperature_K, seed, trajectory and time_fs.
    Returns `n_frames` structures per temperature, in trajectory order, each with the energy and
    forces the MD calculator computed for it (info["method"] names it), so frames sampled with the
    reference method itself need no relabelling; periodic frames keep the calculator's stress too.

    engine="openmm": `calculator` is None and `forcefield` names OpenMM force field files (e.g.
    "amber14/tip3pfb.xml"); `start` is a PDB file (residues and bonds from it) or a Structure of
    water molecules and Na+/Cl- ions. rigid_water=False (default) samples flexible water (the
    force field's O-H bond and H-O-H angle terms); pressure_bar adds a Monte Carlo barostat;
    cutoff (A) is the PME direct-space cutoff of periodic systems. Frames are unlabelled.
    """
    if engine == "openmm":
        if calculator is not None:
            raise ValueError("engine 'openmm' takes a force field (forcefield=), not a calculator")
        if not forcefield:
            raise ValueError("engine 'openmm' needs forcefield=, e.g. 'amber14/tip3pfb.xml'")
        return _sample_openmm(
            start,
            [forcefield] if isinstance(forcefield, str) else list(forcefield),
            temperatures,
            n_frames,
            every=every,
            timestep_fs=timestep_fs,
            friction_per_fs=friction_per_fs,
            equilibration_fs=equilibration_fs,
            seed=seed,
            progress=progress,
            pressure_bar=pressure_bar,
            rigid_water=rigid_water,
            cutoff=cutoff,
            platform=platform,
        )
    if engine != "ase":
        raise ValueError(f"engine must be 'ase' or 'openmm', got {engine!r}")
    if calculator is None:
        raise ValueError("sample needs an ASE calculator (or engine='openmm' with a forcefield)")
    from mlsim.ase._langevin import langevin_nvt

    if n_frames < 1 or every < 1:
        raise ValueError("n_frames and every must be >= 1")
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ValueError(f"temperatures must be positive kelvin values, got {list(temperatures)}")
    if timestep_fs <= 0 or friction_per_fs <= 0:
        raise ValueError("timestep_fs and friction_per_fs must be positive")
    s0 = start if isinstance(start, Structure) else Structure.from_atoms(start)
    n_eq = int(round(equilibration_fs / timestep_fs))
    out: list[Structure] = []
    bar = _progress_bar(len(temperatures) * (n_eq + n_frames * every), "sample MD", progress)
    for k, temp in enumerate(temperatures):
        rng = np.random.default_rng([seed, k])
        atoms = s0.to_atoms()
        factory = isinstance(calculator, type) or not hasattr(calculator, "get_potential_energy")
        atoms.calc = calculator() if factory else calculator
        dyn = langevin_nvt(atoms, temp, timestep_fs, friction_per_fs, rng)
        calc_name = str(
            getattr(atoms.calc, "parameters", {}).get("method") or type(atoms.calc).__name__
        )
        _run_steps(dyn, n_eq, bar)
        for f in range(n_frames):
            _run_steps(dyn, every, bar)
            # The last MD step computed energy and forces at these positions: keep them (the raw
            # calculator forces, not the FixCom-projected ones the integrator used).
            stress = None
            if s0.pbc.all() and "stress" in getattr(atoms.calc, "implemented_properties", ()):
                stress = np.array(atoms.get_stress(voigt=False), dtype=float)
            s = Structure(
                numbers=atoms.numbers.copy(),
                positions=atoms.positions.copy(),
                cell=s0.cell,
                pbc=s0.pbc,
                energy=float(atoms.get_potential_energy()),
                forces=np.array(atoms.get_forces(apply_constraint=False), dtype=float),
                stress=stress,
                info={
                    "temperature_K": float(temp),
                    "seed": int(seed),
                    "trajectory": f"T{temp:g}-seed{seed}",
                    "md_calculator": calc_name,
                    "method": calc_name,
                    "time_fs": round((n_eq + (f + 1) * every) * timestep_fs, 6),
                },
            )
            if not np.isfinite(s.positions).all():
                raise RuntimeError(f"MD at {temp} K exploded (non-finite positions) at frame {f}")
            out.append(s)
    if bar is not None:
        bar.close()
    return Dataset(out)


def _check_temperatures(temperatures: Sequence[float], n_frames: int, every: int) -> None:
    """ValueError for non-positive temperatures or counts."""
    if n_frames < 1 or every < 1:
        raise ValueError("n_frames and every must be >= 1")
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ValueError(f"temperatures must be positive kelvin values, got {list(temperatures)}")


def _water_ion_topology(s: Structure) -> Any:
    """An OpenMM Topology for a Structure of water molecules and Na+/Cl- ions (HOH, NA, CL).

    Molecules are found from covalent radii (minimum image in periodic cells); anything that is
    not H2O or a lone Na/Cl needs a PDB with residue names instead.
    """
    from ase.neighborlist import NeighborList, natural_cutoffs
    from openmm import Vec3, app
    from scipy.sparse.csgraph import connected_components

    atoms = s.to_atoms()
    nl = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=True)
    nl.update(atoms)
    n_mol, label = connected_components(nl.get_connectivity_matrix(sparse=True), directed=False)
    top = app.Topology()
    chain = top.addChain()
    order: list[int] = []
    for m in range(n_mol):
        idx = np.flatnonzero(label == m)
        z = sorted(int(s.numbers[i]) for i in idx)
        if z == [1, 1, 8]:
            o = int(idx[s.numbers[idx] == 8][0])
            hs = [int(i) for i in idx if s.numbers[i] == 1]
            res = top.addResidue("HOH", chain)
            ao = top.addAtom("O", app.element.oxygen, res)
            for k in range(1, len(hs) + 1):
                top.addBond(ao, top.addAtom(f"H{k}", app.element.hydrogen, res))
            order += [o, *hs]
        elif z in ([11], [17]):
            name = "NA" if z == [11] else "CL"
            res = top.addResidue(name, chain)
            top.addAtom(name, app.Element.getByAtomicNumber(z[0]), res)
            order.append(int(idx[0]))
        else:
            from ase.data import chemical_symbols

            raise ValueError(
                f"atoms {idx[:8].tolist()}: a {''.join(chemical_symbols[k] for k in z)} molecule; "
                "engine 'openmm' builds topologies for water and Na+/Cl- only, give a PDB file "
                "with residue names for anything else"
            )
    if order != list(range(len(s))):
        raise ValueError(
            "engine 'openmm' needs each water's atoms together, oxygen first (O H H O H H ...); "
            "reorder the structure or give a PDB file"
        )
    if s.periodic:
        from mlsim import units

        top.setPeriodicBoxVectors([Vec3(*r) for r in units.positions_to_openmm(s.cell)])
    return top


def _openmm_start(start: Structure | Any) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """(Topology, positions A, cell A or None) from a PDB path, a Structure or ase.Atoms."""
    from mlsim import units

    if isinstance(start, (str, Path)):
        from openmm import app

        path = Path(start)
        if not path.is_file():
            raise FileNotFoundError(f"start structure not found: {path}")
        if path.suffix.lower() != ".pdb":
            from mlsim.data._io import read

            return _openmm_start(read(path)[0])
        pdb = app.PDBFile(str(path))
        pos = units.positions_from_openmm(np.asarray(pdb.getPositions(asNumpy=True)._value))
        box = pdb.topology.getPeriodicBoxVectors()
        cell = None
        if box is not None:
            cell = units.positions_from_openmm(np.array([[v.x, v.y, v.z] for v in box._value]))
        return pdb.topology, pos, cell
    s = start if isinstance(start, Structure) else Structure.from_atoms(start)
    if s.periodic and not s.pbc.all():
        raise ValueError("engine 'openmm' needs a fully periodic cell (or none)")
    return _water_ion_topology(s), s.positions, s.cell if s.periodic else None


def _sample_openmm(
    start: Structure | Any,
    forcefield: list[str],
    temperatures: Sequence[float],
    n_frames: int,
    *,
    every: int,
    timestep_fs: float,
    friction_per_fs: float,
    equilibration_fs: float,
    seed: int,
    progress: bool,
    pressure_bar: float | None,
    rigid_water: bool,
    cutoff: float,
    platform: str,
) -> Dataset:
    """Langevin (NVT, or NPT with pressure_bar) with an OpenMM force field; unlabelled frames."""
    from openmm import app, unit

    from mlsim import units
    from mlsim.openmm._engine import (
        box_of,
        get_platform,
        langevin_integrator,
        make_context,
        minimize,
        positions_of,
        potential_energy_of,
        set_barostat,
        set_positions,
        set_velocities,
    )

    _check_temperatures(temperatures, n_frames, every)
    if timestep_fs <= 0 or friction_per_fs <= 0:
        raise ValueError("timestep_fs and friction_per_fs must be positive")
    topology, pos0, cell0 = _openmm_start(start)
    try:
        ff = app.ForceField(*forcefield)
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot load force field {forcefield}: {exc}") from exc
    periodic = cell0 is not None
    if periodic:
        width = float(np.diag(cell0).min())
        if width < 2 * cutoff:
            raise ValueError(
                f"the cell is {width:.1f} A wide, too small for a {cutoff:g} A cutoff (PME needs "
                f"more than 2 x cutoff); use a larger box or a smaller cutoff (--cutoff)"
            )
    elif pressure_bar is not None:
        raise ValueError("pressure_bar (NPT) needs a periodic start structure")
    try:
        system = ff.createSystem(
            topology,
            nonbondedMethod=app.PME if periodic else app.NoCutoff,
            nonbondedCutoff=units.positions_to_openmm(cutoff) * unit.nanometer,
            constraints=None if not rigid_water else app.HBonds,
            rigidWater=rigid_water,
        )
    except ValueError as exc:
        raise ValueError(
            f"force field {forcefield} does not cover the start structure: {exc}"
        ) from exc
    numbers = np.array([a.element.atomic_number for a in topology.atoms()])
    if len(numbers) != len(pos0):
        raise ValueError("the force field added virtual sites; use a 3-site water model")
    name = "+".join(forcefield) + (" (rigid water)" if rigid_water else " (flexible water)")
    friction_per_ps = friction_per_fs * units.FS_PER_PS
    get_platform(platform)  # a bad name fails before any work
    n_eq = int(round(equilibration_fs / timestep_fs))
    total = len(temperatures) * (n_eq + n_frames * every)
    bar = _progress_bar(total, "sample MD (OpenMM)", progress)
    out: list[Structure] = []
    for k, temp in enumerate(temperatures):
        if pressure_bar is not None:
            set_barostat(system, pressure_bar, temp, 25)
        integ_seed = int(np.random.default_rng([seed, k]).integers(1, 2**30))
        integ = langevin_integrator(timestep_fs, temp, friction_per_ps, integ_seed)
        ctx = make_context(system, integ, platform)
        set_positions(ctx, pos0, cell0 if periodic else None)
        # A freshly built box (Modeller.addSolvent, packmol) has clashes that would blow up the
        # first steps; a short minimisation removes them (equilibration does the rest).
        minimize(ctx, 0.01, 500)
        set_velocities(ctx, temp, int(seed * 1000 + k + 1))
        _openmm_steps(integ, n_eq, bar)
        for f in range(n_frames):
            _openmm_steps(integ, every, bar)
            st = ctx.getState(getPositions=True, getEnergy=True)
            pos = positions_of(st)
            if not np.isfinite(pos).all():
                raise RuntimeError(f"MD at {temp} K exploded (non-finite positions) at frame {f}")
            cell = box_of(st) if periodic else None
            e_ev = potential_energy_of(st)
            out.append(
                Structure(
                    numbers=numbers,
                    positions=pos,
                    cell=cell,
                    pbc=periodic,
                    info={
                        "temperature_K": float(temp),
                        "seed": int(seed),
                        "trajectory": f"T{temp:g}-seed{seed}",
                        "md_engine": "openmm",
                        "md_forcefield": name,
                        "pressure_bar": float(pressure_bar) if pressure_bar else 0.0,
                        "time_fs": round((n_eq + (f + 1) * every) * timestep_fs, 6),
                        "mm_energy_eV": e_ev,
                    },
                )
            )
        del ctx
    if bar is not None:
        bar.close()
    return Dataset(out)


def _progress_bar(total: int, desc: str, progress: bool) -> Any:
    """A tqdm bar over `total` MD steps on stderr, or None without progress."""
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr)


def _openmm_steps(integrator: Any, steps: int, bar: Any) -> None:
    """Advance an OpenMM integrator in chunks, updating the progress bar."""
    done = 0
    while done < steps:
        n = min(100, steps - done)
        integrator.step(n)
        done += n
        if bar is not None:
            bar.update(n)


def _run_steps(dyn: Any, steps: int, bar: Any) -> None:
    """Run `steps` MD steps, advancing the progress bar after each (equilibration included)."""
    steps_run = dyn.irun(steps)
    next(steps_run)  # irun yields once before the first step
    for _ in steps_run:
        if bar is not None:
            bar.update(1)


def sample_trajectory(
    trajectory: str | Path | Sequence[Any],
    *,
    every: int = 1,
    start: int = 0,
    stop: int | None = None,
) -> Dataset:
    """Keep frames start, start+every, ... (< stop) of a trajectory file (any ASE/mlsim format) or sequence."""
    if every < 1 or start < 0:
        raise ValueError("every must be >= 1 and start >= 0")
    if isinstance(trajectory, (str, Path)):
        from mlsim.data._io import format_of, read

        path = Path(trajectory)
        if format_of(path) == "ase":
            from ase.io import read as ase_read

            if not path.exists():
                raise FileNotFoundError(f"trajectory {path} not found")
            frames: Sequence[Any] = ase_read(
                path, index=f"{start}:{'' if stop is None else stop}:{every}"
            )
            return Dataset([Structure.from_atoms(a) for a in frames])
        ds = read(path)
        return ds[start:stop:every]
    picked = list(trajectory)[start:stop:every]
    return Dataset([s if isinstance(s, Structure) else Structure.from_atoms(s) for s in picked])
