"""`mlsim md`: OpenMM molecular dynamics of a structure with an mlsim model."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "md"
HELP = "Run OpenMM MD (Langevin or NVE) with an mlsim model: trajectory, state CSV, checkpoints."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the MD options."""
    parser.add_argument("model", type=Path, help="mlsim model file (model.pt)")
    parser.add_argument(
        "--structure", type=Path, required=True, help="starting structure (any ase.io format)"
    )
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("md"), help="output folder")
    parser.add_argument("--steps", type=int, default=10000, help="total number of steps")
    parser.add_argument("--timestep", type=float, default=0.5, help="time step in fs")
    parser.add_argument("--temperature", type=float, default=300.0, help="temperature in K")
    parser.add_argument("--friction", type=float, default=1.0, help="Langevin friction in 1/ps")
    parser.add_argument("--ensemble", choices=["nvt", "nve"], default="nvt")
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
    parser.add_argument("--seed", type=int, help="random seed (velocities and thermostat)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from out-dir/checkpoint.chk"
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
            progress=not args.no_progress,
        )
    except SimulationBlowUp as exc:
        print(f"mlsim md: {exc}", file=sys.stderr)
        return 3
    print(
        f"{res.steps} steps ({res.time_ps:.3f} ps) at {res.steps_per_second:.1f} steps/s; "
        f"trajectory {res.trajectory}, log {res.log}, checkpoint {res.checkpoint}"
    )
    return 0
