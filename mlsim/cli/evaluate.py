"""`mlsim evaluate MODEL DATA`: energy and force errors of a saved model on labelled data."""

from __future__ import annotations

import argparse
import json

NAME = "evaluate"
HELP = "Evaluate a model.pt on labelled data: energy MAE/RMSE per atom, force MAE/RMSE."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("model", help="model.pt written by mlsim train")
    parser.add_argument("data", help="labelled data file (any format mlsim.data reads)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (machine readable)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="structures per evaluation batch"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--energy-unit", help="npz energy unit, e.g. kcal/mol, eV, hartree (MD17: kcal/mol)"
    )
    parser.add_argument("--length-unit", help="npz length unit, e.g. angstrom, bohr, nm")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics."""
    from mlsim.data import read
    from mlsim.models import load_model
    from mlsim.train import evaluate

    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    model = load_model(args.model)
    # mlsim.data.read directly (not train.read_structures): an npz needs its units passed on.
    structures = list(read(args.data, energy_unit=args.energy_unit, length_unit=args.length_unit))
    if not any(s.energy is not None or s.forces is not None for s in structures):
        raise ValueError(f"{args.data} has no energy or force labels to compare with")
    metrics = evaluate(model, structures, batch_size=args.batch_size, progress=not args.no_progress)
    if args.json:
        print(json.dumps(metrics))
    else:

        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        m = {k: fmt(v) if isinstance(v, float) or v is None else v for k, v in metrics.items()}
        print(f"structures: {metrics['n_structures']}  atoms: {metrics['n_atoms']}")
        print(
            f"energy MAE {m['energy_mae_meV_per_atom']} meV/atom  RMSE {m['energy_rmse_meV_per_atom']} meV/atom"
        )
        print(
            f"force  MAE {m['force_mae_meV_per_A']} meV/A     RMSE {m['force_rmse_meV_per_A']} meV/A"
        )
    return 0
