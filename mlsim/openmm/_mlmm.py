"""ML/MM set-ups for a ligand in water or in a protein: GAFF2 classical system, ML ligand, the run.

`build_mlmm_system` makes the classical system (ligand GAFF2/AM1-BCC from AmberTools through
mlsim.openmm._gaff, protein Amber ff14SB/ff19SB, TIP3P/OPC water and ions from OpenMM's force
fields, PME) and hands the ligand to the mlsim model through openmm-ml's mechanical embedding
(`MLPotential("mlsim").createMixedSystem`): ligand-ligand interactions come from the model,
ligand-environment ones from the force field (GAFF2 charges and Lennard-Jones). `run_mlmm`
minimises, equilibrates (NVT, then NPT with a Monte Carlo barostat) and runs production with
run_md's reporters, checkpoints and blow-up checks. Lengths are Angstrom, as everywhere in mlsim;
OpenMM's nm appear only where OpenMM is called.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsim import units
from mlsim._fileio import atomic_path, atomic_write, write_json
from mlsim._geometry_guard import GeometryGuard, SimulationBlowUp
from mlsim.data import Structure
from mlsim.openmm._gaff import GaffTemplate, Ligand, parameterize_ligand, read_ligand
from mlsim.openmm._md import MDResult, reference_energy, run_md

__all__ = [
    "PROTEIN_FORCEFIELDS",
    "WATER_MODELS",
    "MLMMSystem",
    "build_mlmm_system",
    "equilibrate",
    "run_mlmm",
]

# Protein force field -> (OpenMM file, the folder of its water/ion files).
PROTEIN_FORCEFIELDS = {
    "ff14sb": ("amber14-all.xml", "amber14"),
    "ff19sb": ("amber19-all.xml", "amber19"),
}
# Water model -> (Modeller.addSolvent geometry, force field file in the protein force field's
# folder); 4-site OPC is placed as TIP4P-Ew and gets its virtual site from the force field.
WATER_MODELS = {
    "tip3p": ("tip3p", "tip3p.xml"),
    "tip3pfb": ("tip3p", "tip3pfb.xml"),
    "opc": ("tip4pew", "opc.xml"),
    "opc3": ("tip3p", "opc3.xml"),
    "spce": ("spce", "spce.xml"),
    "tip4pew": ("tip4pew", "tip4pew.xml"),
}
# The box may shrink by a few percent while the barostat equilibrates a fresh water box.
_BOX_MARGIN = 1.05


@dataclass
class MLMMSystem:
    """A solvated (protein-)ligand system: ML/MM System, its Topology and positions (Angstrom)."""

    topology: Any  # openmm.app.Topology (residues, bonds, box)
    system: Any  # openmm.System: ML ligand + MM environment (all-MM when built without a model)
    positions: np.ndarray  # (n, 3) Angstrom
    cell: np.ndarray  # (3, 3) Angstrom, rows are box vectors
    ml_atoms: list[int]  # the ligand's atoms, ML-modelled when `model` was given
    mm_system: Any  # the all-MM (GAFF2) System of the same atoms
    ligand: Ligand
    template: GaffTemplate
    model: torch.nn.Module | None
    reference_energy_ev: float  # the model's self energies summed over the ML atoms
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def numbers(self) -> np.ndarray:
        """Atomic numbers of every particle (0 for virtual sites such as OPC's)."""
        return np.array(
            [a.element.atomic_number if a.element is not None else 0 for a in self.topology.atoms()]
        )

    def structure(self) -> Structure:
        """The system as an mlsim Structure (refused with virtual sites, which have no element)."""
        numbers = self.numbers
        if (numbers == 0).any():
            raise ValueError(
                "this system has virtual sites (4-site water such as OPC), which an mlsim "
                "Structure cannot hold; run it with run_mlmm, which handles them"
            )
        return Structure(numbers, self.positions, self.cell, pbc=True)

    def write_pdb(self, path: str | os.PathLike, positions: np.ndarray | None = None) -> Path:
        """Write the topology with positions (Angstrom; default the built ones) as PDB."""
        from openmm import app, unit

        x = self.positions if positions is None else positions
        with atomic_write(path) as fh:
            app.PDBFile.writeFile(
                self.topology, units.positions_to_openmm(x) * unit.nanometer, fh, keepIds=True
            )
        return Path(path)


def _forcefield_files(protein_ff: str, water: str) -> tuple[list[str], str]:
    """The OpenMM force field files and addSolvent's water geometry for these choices."""
    if protein_ff not in PROTEIN_FORCEFIELDS:
        raise ValueError(
            f"unknown protein force field {protein_ff!r}; choose one of {sorted(PROTEIN_FORCEFIELDS)}"
        )
    if water not in WATER_MODELS:
        raise ValueError(f"unknown water model {water!r}; choose one of {sorted(WATER_MODELS)}")
    main, folder = PROTEIN_FORCEFIELDS[protein_ff]
    geometry, water_file = WATER_MODELS[water]
    return [main, f"{folder}/{water_file}"], geometry


def _check_ligand_elements(model: torch.nn.Module, ligand: Ligand) -> None:
    """ValueError naming the ligand file when the model does not know one of its elements."""
    from mlsim.openmm._module import check_elements

    try:
        check_elements(model, ligand.numbers.tolist())
    except ValueError as exc:
        raise ValueError(f"ligand {ligand.source}: {exc}") from exc


def _load_protein(path: Path, forcefield: Any, ph: float) -> Any:
    """The protein as a Modeller; hydrogens added at `ph` when the file has none."""
    from openmm import app

    if not path.is_file():
        raise FileNotFoundError(f"protein file not found: {path}")
    if path.suffix.lower() in (".cif", ".pdbx"):
        pdb = app.PDBxFile(str(path))
    else:
        pdb = app.PDBFile(str(path))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    n_h = sum(1 for a in pdb.topology.atoms() if a.element is not None and a.element.symbol == "H")
    if n_h == 0:
        print(
            f"mlsim: {path} has no hydrogens; adding them for pH {ph:g} (OpenMM Modeller)",
            file=sys.stderr,
        )
        try:
            modeller.addHydrogens(forcefield, pH=ph)
        except ValueError as exc:
            raise ValueError(f"protein {path}: cannot add hydrogens: {exc}") from exc
    return modeller


def _ligand_clash(protein_pos_a: np.ndarray, ligand: Ligand, min_distance: float = 1.0) -> None:
    """ValueError when a ligand atom sits closer than min_distance (A) to a protein atom."""
    from scipy.spatial import cKDTree

    tree = cKDTree(protein_pos_a)
    d, k = tree.query(ligand.positions)
    worst = int(np.argmin(d))
    if d[worst] < min_distance:
        raise ValueError(
            f"ligand {ligand.source}: atom {worst} ({ligand.names[worst]}) is {d[worst]:.2f} A from "
            f"protein atom {int(k[worst])}; the ligand must be posed in the protein's frame "
            "(same coordinates as the protein file, e.g. from a docked or crystal complex)"
        )


def _box_widths(box_nm: Any) -> np.ndarray:
    """Perpendicular widths (A) of a reduced-form box: the diagonal of its vectors."""
    vecs = units.positions_from_openmm(np.array([[v.x, v.y, v.z] for v in box_nm]))
    return np.diag(vecs)


def build_mlmm_system(
    model: torch.nn.Module | str | os.PathLike | None,
    ligand: Ligand | str | os.PathLike,
    protein: str | os.PathLike | None = None,
    *,
    ligand_charge: int | None = None,
    padding: float = 10.0,
    ions: float = 0.15,
    water: str = "tip3p",
    protein_ff: str = "ff14sb",
    cutoff: float = 9.0,
    box_shape: str = "cube",
    ph: float = 7.0,
    backend: str = "auto",
    charge_method: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> MLMMSystem:
    """Solvate a ligand (and a protein around it), with GAFF2 parameters and the ligand as ML.

    padding: the smallest distance (A) between the solute and its periodic image (OpenMM
    Modeller: box edge = solute bounding-sphere diameter + padding, at least 2 x padding).
    ions: NaCl concentration (mol/L) on top of the neutralizing counter-ions. cutoff: the
    direct-space cutoff (A) of PME and Lennard-Jones. model None builds the all-MM (GAFF2)
    system. charge_method: see parameterize_ligand (default: a MOL2 file's own partial charges
    when it has them, else AM1-BCC). Errors before any run: elements the model does not know,
    ligands AmberTools cannot type (see read_ligand), a ligand clashing with the protein, a box
    too small for the cutoffs.
    """
    import openmm
    from openmm import app, unit

    from mlsim.openmm._module import resolve_model

    if padding <= 0 or cutoff <= 0 or ions < 0:
        raise ValueError(
            f"padding ({padding} A) and cutoff ({cutoff} A) must be > 0, ions ({ions} M) >= 0"
        )
    files, geometry = _forcefield_files(protein_ff, water)
    lig = ligand if isinstance(ligand, Ligand) else read_ligand(ligand, charge=ligand_charge)
    if isinstance(ligand, Ligand) and ligand_charge is not None and ligand_charge != lig.net_charge:
        raise ValueError(
            f"ligand {lig.source}: net charge {lig.net_charge:+d}, not {ligand_charge:+d}"
        )
    ml_model = resolve_model(model) if model is not None else None
    if ml_model is not None:
        _check_ligand_elements(ml_model, lig)  # before AmberTools: that part takes a while
    template = parameterize_ligand(
        lig, cache_dir=cache_dir, charge_method=charge_method, progress=progress
    )
    forcefield = app.ForceField(*files, str(template.ffxml))
    if protein is not None:
        modeller = _load_protein(Path(protein), forcefield, ph)
        protein_pos = units.positions_from_openmm(
            np.asarray(modeller.getPositions().value_in_unit(unit.nanometer))
        )
        _ligand_clash(protein_pos, lig)
        modeller.add(lig.topology(), lig.openmm_positions())
    else:
        modeller = app.Modeller(lig.topology(), lig.openmm_positions())
    ligand_chain = list(modeller.topology.chains())[-1].index
    ml_atoms = [a.index for a in modeller.topology.atoms() if a.residue.chain.index == ligand_chain]
    if len(ml_atoms) != len(lig):
        raise RuntimeError(f"found {len(ml_atoms)} ligand atoms after merging, not {len(lig)}")
    t0 = time.perf_counter()
    try:
        modeller.addSolvent(
            forcefield,
            model=geometry,
            padding=units.positions_to_openmm(padding) * unit.nanometer,
            ionicStrength=ions * unit.molar,
            neutralize=True,
            boxShape=box_shape,
        )
    except ValueError as exc:
        where = f"protein {protein}" if protein is not None else f"ligand {lig.source}"
        raise ValueError(f"{where}: cannot solvate: {exc}") from exc
    top = modeller.topology
    widths = _box_widths(top.getPeriodicBoxVectors())
    need_mm = 2 * cutoff * _BOX_MARGIN
    if widths.min() < need_mm:
        raise ValueError(
            f"the box is {widths.min():.1f} A wide, too small for a {cutoff:g} A cutoff (PME "
            f"needs more than 2 x cutoff, {need_mm:.1f} A with a {_BOX_MARGIN - 1:.0%} margin for "
            "the barostat); raise --padding or lower --cutoff"
        )
    if ml_model is not None:
        extent = np.ptp(lig.positions, axis=0).max()
        need_ml = (extent + float(ml_model.cutoff)) * _BOX_MARGIN
        if widths.min() < need_ml:
            raise ValueError(
                f"the box is {widths.min():.1f} A wide: the ligand ({extent:.1f} A across) would "
                f"see its own periodic image within the model's {float(ml_model.cutoff):g} A "
                "cutoff; raise --padding"
            )
    try:
        mm_system = forcefield.createSystem(
            top,
            nonbondedMethod=app.PME,
            nonbondedCutoff=units.positions_to_openmm(cutoff) * unit.nanometer,
            constraints=app.HBonds,
            rigidWater=True,
            ewaldErrorTolerance=5e-4,
        )
    except ValueError as exc:
        where = f"protein {protein}" if protein is not None else f"ligand {lig.source}"
        raise ValueError(f"{where}: the force field does not cover every residue: {exc}") from exc
    if ml_model is not None:
        system = _mixed_system(ml_model, top, mm_system, ml_atoms, backend)
    else:
        system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(mm_system))
    positions = units.positions_from_openmm(
        np.asarray(modeller.getPositions().value_in_unit(unit.nanometer))
    )
    cell = units.positions_from_openmm(
        np.array(
            [[v.x, v.y, v.z] for v in top.getPeriodicBoxVectors().value_in_unit(unit.nanometer)]
        )
    )
    n_water = sum(1 for r in top.residues() if r.name == "HOH")
    n_ions = sum(1 for r in top.residues() if r.name in ("NA", "CL"))
    settings = {
        "ligand": str(lig.source),
        "smiles": lig.smiles,
        "ligand_charge": lig.net_charge,
        "protein": None if protein is None else str(protein),
        "forcefield": [*files, f"GAFF2/{template.meta['charge_method'].upper()} ({template.key})"],
        "water": water,
        "padding_A": padding,
        "ions_M": ions,
        "cutoff_A": cutoff,
        "box_shape": box_shape,
        "box_A": widths.tolist(),
        "n_atoms": top.getNumAtoms(),
        "n_water": n_water,
        "n_ions": n_ions,
        "ml_atoms": len(ml_atoms) if ml_model is not None else 0,
        "template_cached": template.cached,
        "solvate_seconds": round(time.perf_counter() - t0, 2),
    }
    return MLMMSystem(
        topology=top,
        system=system,
        positions=positions,
        cell=cell,
        ml_atoms=ml_atoms,
        mm_system=mm_system,
        ligand=lig,
        template=template,
        model=ml_model,
        reference_energy_ev=reference_energy(ml_model, lig.numbers),
        settings=settings,
    )


def _mixed_system(
    model: torch.nn.Module, topology: Any, mm_system: Any, ml_atoms: list[int], backend: str
) -> Any:
    """openmm-ml mechanical embedding of the ML atoms (the plugin also keeps them one molecule)."""
    from openmmml import MLPotential

    potential = MLPotential("mlsim", model=model, backend=backend)
    return potential.createMixedSystem(_sites_as_hydrogen(topology), mm_system, ml_atoms)


def _sites_as_hydrogen(topology: Any) -> Any:
    """`topology`, or a copy in which virtual sites (OPC's M: no element) read as hydrogen.

    openmm-ml 1.8 looks up the element of every atom while placing link atoms, even when there
    are none to place, and fails on a site; only the ML atoms' elements are used (the ligand's,
    never a site's), so the placeholder changes nothing in the mixed system.
    """
    import copy

    from openmm.app import element

    if all(a.element is not None for a in topology.atoms()):
        return topology
    top = copy.deepcopy(topology)
    for a in top.atoms():
        if a.element is None:
            a.element = element.hydrogen
    return top


def _ligand_problem(context: Any, guard: GeometryGuard | None, ml: np.ndarray) -> str | None:
    """NaN energy, or the ML ligand's bonds broken/formed (GeometryGuard), else None."""
    st = context.getState(getPositions=True, getEnergy=True)
    e = st.getPotentialEnergy()._value
    if not np.isfinite(e):
        return f"potential energy is {e}"
    if guard is None:
        return None
    pos = units.positions_from_openmm(np.asarray(st.getPositions(asNumpy=True)._value))
    box = units.positions_from_openmm(np.asarray(st.getPeriodicBoxVectors(asNumpy=True)._value))
    msg = guard.check(pos[ml], box, True)
    return f"ligand {msg} (ligand atom numbering)" if msg else None


def _energy_line(label: str, e_kj: float, offset_kj: float) -> str:
    """'label: E_rel kJ/mol (absolute E_abs)' for logs."""
    if offset_kj == 0.0:
        return f"{label}: {e_kj:,.1f} kJ/mol"
    return (
        f"{label}: {e_kj - offset_kj:,.1f} kJ/mol relative to the model's self energies "
        f"(absolute {e_kj:,.1f})"
    )


def equilibrate(
    setup: MLMMSystem,
    out_dir: str | os.PathLike,
    *,
    temperature_k: float = 300.0,
    pressure_bar: float = 1.0,
    timestep_fs: float = 1.0,
    friction_per_ps: float = 1.0,
    nvt_ps: float = 10.0,
    npt_ps: float = 10.0,
    minimize_tolerance: float = 0.01,
    max_minimize_steps: int = 1000,
    ml_minimize_steps: int = 100,
    platform: str = "CPU",
    seed: int | None = None,
    report_interval: int = 500,
    check_interval: int = 100,
    verbose: bool = True,
    geometry_check: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise, then NVT for nvt_ps and NPT (Monte Carlo barostat) for npt_ps; (positions, cell) A.

    Writes equilibration.csv (relative energies, volume, density) and equilibrated.pdb to
    out_dir; with verbose, one line per stage to stderr. minimize_tolerance is the largest
    force left (eV/Angstrom): at most max_minimize_steps L-BFGS iterations of the all-MM system, then
    ml_minimize_steps of the ML/MM one (kept only if the ligand's bonds survive them). Every
    check_interval steps the ML ligand's bonds (from the input file) and the energy are checked:
    SimulationBlowUp names the stage, as run_md does in production; geometry_check=False keeps
    only the energy check (run_mlmm passes run_md's geometry_check through).
    """
    import openmm
    from openmm import unit

    from mlsim.openmm._engine import (
        get_platform,
        langevin_integrator,
        make_context,
        make_simulation,
        minimize,
        set_barostat,
        set_positions,
        set_velocities,
        velocities_of,
    )
    from mlsim.openmm._md import _state_reporter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    offset_kj = float(units.energy_to_openmm(setup.reference_energy_ev))
    get_platform(platform)  # a bad name fails before any work
    system = setup.system
    log = print if verbose else (lambda *a, **k: None)

    def simulation(barostat_interval: int) -> Any:
        set_barostat(system, pressure_bar, temperature_k, barostat_interval)
        integ = langevin_integrator(timestep_fs, temperature_k, friction_per_ps, seed)
        return make_simulation(setup.topology, system, integ, platform)

    ml = np.asarray(setup.ml_atoms if setup.model is not None else [], dtype=int)
    # The ligand's bonds as the input file has them; the ML model must keep them through
    # minimisation and equilibration (production checks them again in run_md).
    # geometry_check=False (as run_md's) leaves only the NaN-energy check.
    guard = (
        GeometryGuard.from_structure(
            setup.numbers[ml], setup.positions[ml], setup.cell, True, min_distance=0.5
        )
        if ml.size and geometry_check
        else None
    )

    def checked_steps(s: Any, n: int, stage: str) -> None:
        """Run n steps in chunks; SimulationBlowUp on NaN or a broken/formed ligand bond."""
        done = 0
        while done < n:
            k = min(check_interval, n - done)
            s.step(k)
            done += k
            problem = _ligand_problem(s.context, guard, ml)
            if problem:
                raise SimulationBlowUp(
                    f"{stage} failed between steps {done - k} and {done}: {problem}; the ML "
                    "ligand left the model's domain (try a smaller --timestep, a longer "
                    "minimisation, or check the model's training data)"
                )

    sim = simulation(0)
    set_positions(sim.context, setup.positions, setup.cell)
    e0 = sim.context.getState(getEnergy=True).getPotentialEnergy()._value
    log(_energy_line("mlsim: start", e0, offset_kj), file=sys.stderr)
    t0 = time.perf_counter()
    # Minimise with the all-MM system first: it removes the solvation clashes while GAFF2 holds
    # the ligand together. L-BFGS on the ML/MM system alone can pull an ML ligand apart (ML
    # models have unphysical low-energy regions far from their training data, and MM charges
    # nearby reward them), so the ML/MM system only gets a short relaxation from there.
    mm_ctx = make_context(setup.mm_system, None, platform)
    set_positions(mm_ctx, setup.positions, setup.cell)
    minimize(mm_ctx, minimize_tolerance, max_minimize_steps)
    mm_min = mm_ctx.getState(getPositions=True).getPositions(asNumpy=True)
    del mm_ctx
    sim.context.setPositions(mm_min)
    if ml.size:
        tolerance = (
            units.forces_to_openmm(minimize_tolerance) * unit.kilojoule_per_mole / unit.nanometer
        )
        sim.minimizeEnergy(tolerance=tolerance, maxIterations=ml_minimize_steps)
        problem = _ligand_problem(sim.context, guard, ml)
        if problem:
            log(
                f"mlsim: the ML/MM relaxation broke the ligand ({problem}); starting from the "
                "all-MM minimum instead",
                file=sys.stderr,
            )
            sim.context.setPositions(mm_min)
    problem = _ligand_problem(sim.context, guard, ml)
    if problem:
        raise SimulationBlowUp(f"energy minimisation broke the ML ligand: {problem}")
    e1 = sim.context.getState(getEnergy=True).getPotentialEnergy()._value
    log(
        _energy_line(f"mlsim: minimised ({time.perf_counter() - t0:.0f} s)", e1, offset_kj),
        file=sys.stderr,
    )
    csv = out / "equilibration.csv"
    if csv.exists():
        csv.unlink()  # a fresh equilibration replaces an old log
    reporter = _state_reporter(csv, report_interval, offset_kj, True, False)
    set_velocities(sim.context, temperature_k, seed)
    n_nvt = int(round(nvt_ps * units.FS_PER_PS / timestep_fs))
    n_npt = int(round(npt_ps * units.FS_PER_PS / timestep_fs))
    sim.reporters.append(reporter)
    t0 = time.perf_counter()
    checked_steps(sim, n_nvt, "NVT equilibration")
    state = sim.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
    log(
        _energy_line(
            f"mlsim: NVT {nvt_ps:g} ps ({time.perf_counter() - t0:.0f} s)",
            state.getPotentialEnergy()._value,
            offset_kj,
        ),
        file=sys.stderr,
    )
    if n_npt:
        sim2 = simulation(25)
        sim2.currentStep = sim.currentStep
        sim2.context.setTime(state.getTime())
        sim2.context.setPeriodicBoxVectors(*state.getPeriodicBoxVectors())
        sim2.context.setPositions(state.getPositions())
        sim2.context.setVelocities(state.getVelocities())
        sim2.reporters.append(reporter)
        t0 = time.perf_counter()
        checked_steps(sim2, n_npt, "NPT equilibration")
        state = sim2.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
        vol = state.getPeriodicBoxVolume().value_in_unit(unit.nanometer**3)
        log(
            _energy_line(
                f"mlsim: NPT {npt_ps:g} ps ({time.perf_counter() - t0:.0f} s, volume "
                f"{vol:.2f} nm^3)",
                state.getPotentialEnergy()._value,
                offset_kj,
            ),
            file=sys.stderr,
        )
    fh = getattr(reporter, "_out", None)
    if hasattr(fh, "close"):
        fh.close()
    positions = units.positions_from_openmm(np.asarray(state.getPositions(asNumpy=True)._value))
    cell = units.positions_from_openmm(np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value))
    topo_box = [openmm.Vec3(*row) for row in units.positions_to_openmm(cell)]
    setup.topology.setPeriodicBoxVectors(topo_box)
    setup.write_pdb(out / "equilibrated.pdb", positions)
    # Production continues with these velocities: fresh Maxwell-Boltzmann ones, projected onto
    # the constraints (rigid water), start far below the target (~155 K for 300 K).
    with atomic_path(out / "equilibrated_velocities.npz", suffix=".npz") as tmp:
        np.savez(tmp, velocities=velocities_of(state), units="Angstrom/fs")
    return positions, cell


def _equilibrated_velocities(out: Path, n: int) -> np.ndarray | None:
    """The velocities (A/fs) equilibrate() left in out, or None (none, or not this system's)."""
    path = out / "equilibrated_velocities.npz"
    if not path.is_file():
        return None
    with np.load(path) as f:
        v = np.asarray(f["velocities"], dtype=float)
    return v if v.shape == (n, 3) and np.isfinite(v).all() else None


def _read_pdb(path: Path, setup: MLMMSystem) -> tuple[np.ndarray, np.ndarray]:
    """Positions and cell (Angstrom) of a PDB written for this system; ValueError if another one."""
    from openmm import app

    pdb = app.PDBFile(str(path))
    if pdb.topology.getNumAtoms() != setup.topology.getNumAtoms():
        raise ValueError(
            f"{path} has {pdb.topology.getNumAtoms()} atoms, the system built now "
            f"{setup.topology.getNumAtoms()}: resume with the same inputs and options"
        )
    pos = units.positions_from_openmm(np.asarray(pdb.getPositions(asNumpy=True)._value))
    box = pdb.topology.getPeriodicBoxVectors()
    cell = units.positions_from_openmm(np.array([[v.x, v.y, v.z] for v in box._value]))
    return pos, cell


def run_mlmm(
    setup: MLMMSystem,
    out_dir: str | os.PathLike,
    steps: int,
    *,
    ensemble: str = "nvt",
    timestep_fs: float = 1.0,
    temperature_k: float = 300.0,
    pressure_bar: float = 1.0,
    friction_per_ps: float = 1.0,
    nvt_ps: float = 10.0,
    npt_ps: float = 10.0,
    max_minimize_steps: int = 1000,
    platform: str = "CPU",
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
    **md_args: Any,
) -> MDResult:
    """Equilibrate (unless resuming), then run `steps` production steps with run_md.

    ensemble "nvt" (the equilibrated box, default) or "npt" (Monte Carlo barostat at pressure_bar).
    out_dir gets run_md's files (trajectory, state.csv, topology.pdb with the whole system,
    checkpoints) plus equilibration.csv, equilibrated.pdb and setup.json. Extra keywords go to
    run_md (report_interval, checkpoint_interval, trajectory, max_force, ...).
    """
    if ensemble not in ("npt", "nvt"):
        raise ValueError(f"a solvated run is 'npt' or 'nvt', got {ensemble!r}")
    out = Path(out_dir)
    if resume:
        # run_md takes the state from the checkpoint; its bond checks start from the equilibrated
        # structure, as in the first run (the raw solvated box has clashes minimisation removed).
        eq = out / "equilibrated.pdb"
        if not eq.is_file():
            raise FileNotFoundError(f"cannot resume: {eq} is missing (no finished equilibration)")
        positions, cell = _read_pdb(eq, setup)
    else:
        trajectory = out / md_args.get("trajectory", "trajectory.dcd")
        if trajectory.exists():
            raise ValueError(
                f"{trajectory} exists; pass resume to continue that run or choose another folder"
            )
        positions, cell = equilibrate(
            setup,
            out,
            temperature_k=temperature_k,
            pressure_bar=pressure_bar,
            timestep_fs=timestep_fs,
            friction_per_ps=friction_per_ps,
            nvt_ps=nvt_ps,
            npt_ps=npt_ps,
            max_minimize_steps=max_minimize_steps,
            platform=platform,
            seed=seed,
            verbose=True,
            geometry_check=md_args.get("geometry_check", True),
        )
        write_json(
            out / "setup.json",
            {
                **setup.settings,
                "template": str(setup.template.folder),
                "ml_atoms_indices": setup.ml_atoms if setup.model is not None else [],
                "reference_energy_eV": setup.reference_energy_ev,
                "equilibration": {
                    "nvt_ps": nvt_ps,
                    "npt_ps": npt_ps,
                    "timestep_fs": timestep_fs,
                    "temperature_K": temperature_k,
                    "pressure_bar": pressure_bar,
                },
                "units": "lengths in Angstrom, concentrations in mol/L, energies in eV",
            },
        )
    # A Structure has no element 0: virtual sites (4-site water) get a placeholder, which run_md
    # never reads (its checks and the degrees of freedom leave massless sites out).
    numbers = np.where(setup.numbers == 0, 1, setup.numbers)
    structure = Structure(numbers, positions, cell, pbc=True)
    return run_md(
        setup.model,
        structure,
        out,
        steps,
        timestep_fs=timestep_fs,
        temperature_k=temperature_k,
        friction_per_ps=friction_per_ps,
        ensemble=ensemble,
        platform=platform,
        seed=seed,
        resume=resume,
        progress=progress,
        pressure_bar=pressure_bar,
        system=setup.system,
        topology=setup.topology,
        ml_atoms=setup.ml_atoms if setup.model is not None else None,
        velocities=None if resume else _equilibrated_velocities(out, len(numbers)),
        **md_args,
    )
