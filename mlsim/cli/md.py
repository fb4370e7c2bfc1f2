"""`mlsim md`: OpenMM molecular dynamics of a structure with an mlsim model."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "md"
HELP = "Run OpenMM MD (Langevin or NVE) with an mlsim model: trajectory, state CSV, checkpoints."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the MD options; --help shows every default."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.epilog = (
        "Every report the state is checked (NaN, forces, temperature, NVE energy drift, covalent "
        "bonds broken or formed, atoms too close); on a problem the run stops with exit status 3 "
        "and the last good state in OUT_DIR/last_good_state.xml and checkpoint.chk. OUT_DIR holds "
        "TRAJECTORY.json with the time step, frame spacing and units of every file."
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
        choices=["nvt", "nve"],
        default="nvt",
        help="nvt: Langevin thermostat; nve: velocity Verlet",
    )
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


def run(args: argparse.Namespace) -> int:
    """Run the simulation and print a summary; exit status 3 when it blew up."""
    import sys

    import ase.io

    from mlsim.data import Structure
    from mlsim.openmm import SimulationBlowUp, run_md

    if not args.structure.is_file():
        raise FileNotFoundError(f"structure file not found: {args.structure}")
    from mlsim.data import read
    from mlsim.data._io import format_of

    if format_of(args.structure) == "extxyz":
        structure = read(args.structure)[-1]  # strict: a truncated file is an error
    else:
        structure = Structure.from_atoms(ase.io.read(args.structure))
    try:
        res = run_md(
            args.model,
            structure,
            args.out_dir,
            steps=args.steps,
            timestep_fs=args.timestep,
            temperature_k=args.temperature,
            friction_per_ps=args.friction,
            ensemble=args.ensemble,
            backend=args.backend,
            platform=args.platform,
            report_interval=args.report_interval,
            checkpoint_interval=args.checkpoint_interval,
            trajectory=args.trajectory,
            max_force=args.max_force,
            seed=args.seed,
            resume=args.resume,
            max_uncertainty=args.max_uncertainty,
            progress=not args.no_progress,
            max_temperature=args.max_temperature,
            max_energy_drift=args.max_energy_drift,
            geometry_check=not args.no_geometry_check,
            min_distance=args.min_distance,
        )
    except SimulationBlowUp as exc:
        print(f"mlsim md: {exc}", file=sys.stderr)
        return 3
    print(
        f"{res.steps} steps ({res.time_ps:.3f} ps) at {res.steps_per_second:.1f} steps/s; "
        f"trajectory {res.trajectory}, log {res.log}, checkpoint {res.checkpoint}"
    )
    return 0
