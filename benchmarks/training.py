"""Learning curve: held-out force/energy error vs number of training structures, ANI vs PaiNN.

    .venv/bin/python benchmarks/training.py                # ethanol B3LYP, 100/250/500/1000
    .venv/bin/python benchmarks/training.py --sizes 100 250 --minutes 2 --architectures ani

Each point trains from scratch with examples/ethanol/train.yaml (architecture and budget
overridden here), on the first N structures of one seeded permutation of the training pool (so the
sets are nested), and is evaluated on the independent held-out file. Prints a table and writes
benchmarks/results/training.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ETHANOL = ROOT / "examples" / "ethanol"

# Per-architecture hyper-parameters used when the config's architecture differs.
DEFAULT_MODELS = {
    "ani": {"architecture": "ani", "hyperparameters": {"hidden": [128, 96, 64]}},
    "painn": {
        "architecture": "painn",
        "hyperparameters": {"features": 64, "num_interactions": 3, "cutoff": 5.0},
    },
}


def main(argv: list[str] | None = None) -> int:
    """Run the learning-curve benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ETHANOL / "train.yaml"))
    p.add_argument("--data", default=None, help="training pool (default: the config's data)")
    p.add_argument("--test", default=None, help="held-out file (default: the config's test_data)")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000])
    p.add_argument(
        "--architectures", nargs="+", default=["ani", "painn"], choices=sorted(DEFAULT_MODELS)
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget per point (default: the config's)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training.json"))
    args = p.parse_args(argv)

    from mlsim.models import load_model
    from mlsim.train import evaluate, load_config, train
    from mlsim.train._data import read_structures

    base = load_config(args.config)
    data = Path(args.data).resolve() if args.data else base.path(base.data)
    test = (
        Path(args.test).resolve()
        if args.test
        else (base.path(base.test_data) if base.test_data else None)
    )
    for f in (data, test):
        if f is None or not f.is_file():
            print(
                f"data file {f} is missing (examples/ethanol/make_dataset.py makes it); nothing measured",
                file=sys.stderr,
            )
            return 1
    pool = len(read_structures(data))
    test_set = read_structures(test)
    if base.val_data:
        n_val = 0  # validation is its own file; the whole pool can train
    else:
        n_val = base.n_val if base.n_val is not None else max(1, round(base.val_fraction * pool))
    sizes = [n for n in args.sizes if n <= pool - n_val]
    if len(sizes) < len(args.sizes):
        print(
            f"only {pool} structures in {data} ({n_val} for validation): skipping sizes > {pool - n_val}",
            file=sys.stderr,
        )

    # The recipe as it was when measured (the config file may change later).
    settings = {
        k: v
        for k, v in dataclasses.asdict(base).items()
        if k not in ("data", "test_data", "val_data", "output", "base_dir", "model", "plots")
    }
    settings["time_budget_min"] = args.minutes if args.minutes is not None else base.time_budget_min
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.architectures:
            model = base.model if base.model.get("architecture") == arch else DEFAULT_MODELS[arch]
            for n in sizes:
                over = {
                    "data": str(data),
                    "test_data": None,
                    "n_train": n,
                    "model": model,
                    "output": str(Path(tmp) / f"{arch}_{n}"),
                    "plots": False,
                }
                over["time_budget_min"] = args.minutes
                cfg = load_config(args.config, over)
                t0 = time.perf_counter()
                summary = train(cfg, progress=True)
                wall = time.perf_counter() - t0
                m = evaluate(load_model(Path(cfg.output) / "model.pt"), test_set)
                rows.append(
                    {
                        "architecture": arch,
                        "n_train": n,
                        "epochs": summary["epochs"],
                        "train_time_s": round(summary["train_time_s"], 1),
                        "wall_s": round(wall, 1),
                        "val": summary["val"],
                        "test": m,
                    }
                )
                print(
                    f"{arch:6s} n={n:5d}  force MAE {m['force_mae_meV_per_A']:7.2f} meV/A  energy MAE {m['energy_mae_meV_per_atom']:6.3f} meV/atom  ({summary['epochs']} epochs, {summary['train_time_s']:.0f} s)",
                    flush=True,
                )
                _write(rows, sizes, args, data, test, len(test_set), settings, final=False)

    _write(rows, sizes, args, data, test, len(test_set), settings, final=True)
    return 0


def _write(
    rows: list[dict],
    sizes: list[int],
    args: argparse.Namespace,
    data: Path,
    test: Path,
    n_test: int,
    settings: dict,
    final: bool,
) -> None:
    """Write the JSON atomically (after every point, so an interrupted run keeps what it measured)."""
    import torch

    from mlsim.models import load_metadata

    if final:
        print("\narch    n_train  force MAE (meV/A)  force RMSE  energy MAE (meV/atom)  train s")
        for r in rows:
            t = r["test"]
            print(
                f"{r['architecture']:7s} {r['n_train']:7d}  {t['force_mae_meV_per_A']:17.2f}  {t['force_rmse_meV_per_A']:10.2f}  {t['energy_mae_meV_per_atom']:21.3f}  {r['train_time_s']:7.0f}"
            )
    ratios = {}
    for n in sizes:
        by = {
            r["architecture"]: r["test"]["force_mae_meV_per_A"] for r in rows if r["n_train"] == n
        }
        if "ani" in by and "painn" in by:
            ratios[str(n)] = round(by["ani"] / by["painn"], 3)
    if ratios and final:
        print("force MAE ratio ANI/PaiNN by n_train:", ratios)
    result = {
        "benchmark": "training learning curve",
        "data": str(data.relative_to(ROOT)) if data.is_relative_to(ROOT) else str(data),
        "test": str(test.relative_to(ROOT)) if test.is_relative_to(ROOT) else str(test),
        "n_test": n_test,
        "config": str(Path(args.config).resolve().relative_to(ROOT))
        if Path(args.config).resolve().is_relative_to(ROOT)
        else args.config,
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "settings": settings,
        "rows": rows,
        "force_mae_ratio_ani_over_painn": ratios,
        "complete": final,
    }
    # The shipped model (trained with the config's full budget on the whole pool), for comparison
    # with the fixed-budget points above.
    shipped = ROOT / "examples" / "ethanol" / "model.pt"
    if shipped.is_file():
        meta = load_metadata(shipped)
        result["shipped_model"] = {
            "path": str(shipped.relative_to(ROOT)),
            "architecture": meta.get("architecture"),
            "hyperparameters": meta.get("hyperparameters"),
            "training": meta.get("training"),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    tmp_out.replace(out)
    if final:
        print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
