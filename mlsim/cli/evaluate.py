"""`mlsim evaluate MODEL DATA`: energy and force errors of a saved model on labelled data."""

from __future__ import annotations

import argparse
import json

NAME = "evaluate"
HELP = (
    "Evaluate a model.pt on labelled data: energy MAE/RMSE per atom, force MAE/RMSE, and stress "
    "MAE/RMSE where the data carry stresses."
)


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
    parser.add_argument(
        "--uncertainty-csv",
        metavar="CSV",
        help="committee models: per-structure errors beside the committee spread (eV, eV/A)",
    )
    parser.add_argument(
        "--calibration-plot",
        metavar="PNG",
        help="committee models: observed vs predicted per-atom force error",
    )


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
    if not any(
        s.energy is not None or s.forces is not None or s.stress is not None for s in structures
    ):
        raise ValueError(f"{args.data} has no energy, force or stress labels to compare with")
    metrics = evaluate(model, structures, batch_size=args.batch_size, progress=not args.no_progress)
    if hasattr(model, "member_energies"):
        metrics["uncertainty"] = _uncertainty(model, structures, args)
    elif args.uncertainty_csv or args.calibration_plot:
        raise ValueError(f"{args.model} is not a committee (ensemble): it has no uncertainty")
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
        if metrics["stress_mae_meV_per_A3"] is not None:
            from ase.units import GPa

            gpa = 1e-3 / GPa  # 1 meV/A^3 in GPa
            print(
                f"stress MAE {m['stress_mae_meV_per_A3']} meV/A^3   RMSE "
                f"{m['stress_rmse_meV_per_A3']} meV/A^3 (MAE "
                f"{metrics['stress_mae_meV_per_A3'] * gpa:.3f} GPa)"
            )
        u = metrics.get("uncertainty")
        if u:
            c = u["calibration"]
            print(
                f"committee: per-atom force spread x {c['scale']:.2f} = expected error; "
                f"Spearman(spread, error) {c['spearman']:.2f} per atom, "
                f"{u['spearman_structure_max_force']:.2f} per structure (max over atoms)"
            )
    return 0


def _uncertainty(model: object, structures: list, args: argparse.Namespace) -> dict[str, object]:
    """Committee spread vs observed error: calibration, rank correlations, optional CSV and plot."""
    import numpy as np

    from mlsim._fileio import write_text
    from mlsim.models._uncertainty import (
        calibrate,
        committee_errors,
        plot_calibration,
        spearman,
    )

    r = committee_errors(model, structures, progress=not args.no_progress)
    cal = calibrate(r["force_std"], r["force_error"])
    out: dict[str, object] = {
        "calibration": cal.to_dict(),
        "spearman_structure_max_force": spearman(r["max_force_std"], r["max_force_error"]),
        "mean_energy_std_meV_per_atom": float(np.mean(r["energy_std"] / r["n_atoms"]) * 1000.0),
    }
    if args.uncertainty_csv:
        cols = ["energy_error", "energy_std", "max_force_error", "max_force_std", "n_atoms"]
        lines = [
            "# units: eV (energy), eV/A (forces); errors are model - reference",
            "index," + ",".join(cols),
        ]
        for k in range(len(r["n_atoms"])):
            lines.append(f"{r['index'][k]}," + ",".join(f"{r[c][k]:.8g}" for c in cols))
        write_text(args.uncertainty_csv, "\n".join(lines) + "\n")
    if args.calibration_plot:
        plot_calibration(r["force_std"], r["force_error"], cal, args.calibration_plot)
    return out
