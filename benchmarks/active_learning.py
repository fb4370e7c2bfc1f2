"""Active learning against random selection, on the ethanol `mlsim learn` run (issue #14 a, c).

Run: OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/active_learning.py
     [--learn examples/ethanol/learn.yaml] [--random examples/ethanol/learn_random] [--no-random]

For every iteration of the learn run that has a trained committee, the committee is evaluated on
the fixed in-distribution test set and on the hot test set (900/1000 K, xTB with a Bussi thermostat:
a sampler other than the loop's own). The random arm takes, at every iteration, as many frames as
active learning selected, uniformly at random from the SAME explored pool (that iteration's
explore.extxyz), labels them with the same reference (resumable), and retrains from its own previous
committee with the same training config for the same number of epochs as the active-learning arm
(epochs, not minutes: the machine is shared, so wall-time budgets would favour whichever arm ran on
a quieter machine). Both arms thus differ only in which frames were labelled.

Prints a table and writes benchmarks/results/active_learning.json and active_learning.png. Every
step resumes: labels, trained committees and evaluations are kept in the random arm's folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ETHANOL = ROOT / "examples" / "ethanol"
RESULTS = ROOT / "benchmarks" / "results"
GOALS = {"hot_force_mae_meV_A": 15.0, "test_force_mae_meV_A": 9.0, "max_extra_labels": 500}


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _errors(model_path: Path, sets: dict[str, list]) -> dict[str, dict[str, float]]:
    """Force and energy MAE of a committee's mean on each labelled set."""
    from mlsim.models import load_model
    from mlsim.train import evaluate

    model = load_model(model_path)
    out = {}
    for name, structures in sets.items():
        m = evaluate(model, structures)
        out[name] = {
            "force_mae_meV_A": round(float(m["force_mae_meV_per_A"]), 2),
            "energy_mae_meV_atom": round(float(m["energy_mae_meV_per_atom"]), 3),
        }
    return out


def _cached_errors(model_path: Path, sets: dict[str, list], cache: dict) -> dict:
    key = f"{model_path.resolve()}:{model_path.stat().st_mtime_ns}"
    if key not in cache:
        cache[key] = _errors(model_path, sets)
    return cache[key]


def _random_arm_iteration(
    cfg: Any, run: Path, arm: Path, k: int, n_pick: int, epochs: int, seed: int, label_only: bool
) -> Path | None:
    """Label n_pick random frames of iteration k's explored pool and retrain; returns model.pt."""
    from mlsim._fileio import write_json
    from mlsim.data import label, read, write
    from mlsim.learn._reference import labeller_options
    from mlsim.train import load_config, train

    folder = arm / f"iter_{k:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "train" / "model.pt"
    if model_path.is_file():
        return model_path
    picked_path = folder / "selected.json"
    pool = list(read(run / f"iter_{k:03d}" / "explore.extxyz"))
    if not picked_path.is_file():
        rng = np.random.default_rng(seed + k)
        picked = sorted(int(i) for i in rng.choice(len(pool), size=n_pick, replace=False))
        write_json(picked_path, picked)
    picked = json.loads(picked_path.read_text())
    sel = folder / "selected.extxyz"
    if not sel.is_file():
        write(sel, [pool[i] for i in picked])
    labels = folder / "labels.extxyz"
    done = folder / "labels.done"
    if not done.is_file():
        method, options = labeller_options(cfg.reference)
        label(sel, labels, method, progress=True, **options)
        write_json(done, {"labels": labels.name})
    if label_only:
        return None
    data = list(read(cfg.path(cfg.initial_data)))
    for j in range(1, k + 1):
        data += list(read(arm / f"iter_{j:03d}" / "labels.extxyz"))
    data_path = folder / "train_data.extxyz"
    write(data_path, data)
    init = run / "iter_000" / "train" / "model.pt" if k == 1 else arm / f"iter_{k - 1:03d}"
    if k > 1:
        init = init / "train" / "model.pt"
    overrides = {
        "data": str(data_path.resolve()),
        "output": str((folder / "train").resolve()),
        "init_model": str(init.resolve()),
        "epochs": int(epochs),
        "early_stopping_patience": int(epochs) + 1,
        "time_budget_min": None,
    }
    tcfg = load_config(cfg.path(cfg.train), overrides)
    train(tcfg, resume=(folder / "train" / "checkpoint.pt").is_file(), progress=True)
    return model_path


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlsim._fileio import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, goal, title in (
        (axes[0], "hot", GOALS["hot_force_mae_meV_A"], "hot test set (900-1000 K)"),
        (axes[1], "test", GOALS["test_force_mae_meV_A"], "in-distribution test set"),
    ):
        for arm, style in (("active", "o-"), ("random", "s--")):
            pts = [(r["extra_labels"], r[key]["force_mae_meV_A"]) for r in rows if r["arm"] == arm]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, style, label=f"{arm} selection")
        ax.axhline(goal, color="grey", lw=0.8, ls=":", label=f"goal {goal:g}")
        ax.set(xlabel="extra B3LYP labels", ylabel="force MAE (meV/A)", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main() -> None:
    """Evaluate both arms iteration by iteration; print the table, write JSON and PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learn", type=Path, default=ETHANOL / "learn.yaml")
    parser.add_argument("--random", type=Path, default=ETHANOL / "learn_random")
    parser.add_argument("--no-random", action="store_true", help="evaluate the active arm only")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument(
        "--label-only", action="store_true", help="label the random arm's frames, train nothing"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "active_learning.json")
    args = parser.parse_args()

    from mlsim._fileio import write_json
    from mlsim.data import read
    from mlsim.learn import load_learn_config

    cfg = load_learn_config(args.learn)
    run = cfg.path(cfg.output)
    sets = {
        "test": list(read(ETHANOL / "ethanol_test_dft.extxyz.gz")),
        "hot": list(read(ETHANOL / "ethanol_hot_test_dft.extxyz.gz")),
    }
    args.random.mkdir(parents=True, exist_ok=True)
    cache_path = args.random / "evaluations.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    cpu0, t0 = _cpu_seconds(), time.perf_counter()

    rows: list[dict[str, Any]] = []
    shipped = ETHANOL / "model.pt"
    rows.append({"arm": "shipped", "iteration": None, "extra_labels": 0,
                 **_cached_errors(shipped, sets, cache)})  # fmt: skip
    boot = run / "iter_000" / "train" / "model.pt"
    for arm in ("active", "random"):
        rows.append({"arm": arm, "iteration": 0, "extra_labels": 0,
                     **_cached_errors(boot, sets, cache)})  # fmt: skip
    extra = {"active": 0, "random": 0}
    k = 1
    while (run / f"iter_{k:03d}" / "selected.json").is_file():
        folder = run / f"iter_{k:03d}"
        n = len(json.loads((folder / "selected.json").read_text()))
        model, summary = folder / "train" / "model.pt", folder / "train" / "summary.json"
        trained = model.is_file() and summary.is_file()
        epochs = int(json.loads(summary.read_text())["epochs"]) if trained else None
        if trained:
            extra["active"] += n
            rows.append({"arm": "active", "iteration": k, "extra_labels": extra["active"],
                         "epochs": epochs, **_cached_errors(model, sets, cache)})  # fmt: skip
            write_json(cache_path, cache)
        if args.no_random or not (trained or args.label_only):
            break
        rmodel = _random_arm_iteration(
            cfg, run, args.random, k, n, epochs or 0, args.seed, args.label_only or not trained
        )
        if rmodel is not None:
            extra["random"] += n
            rows.append({"arm": "random", "iteration": k, "extra_labels": extra["random"],
                         "epochs": epochs, **_cached_errors(rmodel, sets, cache)})  # fmt: skip
            write_json(cache_path, cache)
        if not trained:
            break
        k += 1

    print(f"{'arm':8s} {'iter':>4s} {'labels':>6s} {'hot F MAE':>10s} {'test F MAE':>10s}")
    for r in rows:
        it = "-" if r["iteration"] is None else str(r["iteration"])
        print(
            f"{r['arm']:8s} {it:>4s} {r['extra_labels']:6d} {r['hot']['force_mae_meV_A']:10.2f}"
            f" {r['test']['force_mae_meV_A']:10.2f}"
        )
    png = args.out.with_suffix(".png")
    _plot(rows, png)
    result = {
        "benchmark": "active_learning",
        "system": "ethanol, B3LYP/6-31G* (density fitting), committee of 4 PaiNN",
        "learn_config": str(args.learn.resolve().relative_to(ROOT)),
        "test_sets": {
            "test": "examples/ethanol/ethanol_test_dft.extxyz.gz (300 frames, training sampler)",
            "hot": "examples/ethanol/ethanol_hot_test_dft.extxyz.gz (200 frames, 900/1000 K, "
            "GFN2-xTB with a Bussi thermostat, not the loop's sampler)",
        },
        "random_arm": "same explored pool per iteration, same number of labels, same training "
        "config and epochs, warm start from its own previous committee",
        "goals": GOALS,
        "units": {"force_mae": "meV/A", "energy_mae": "meV/atom"},
        "rows": rows,
        "plot": png.name,
        "cpu_s": round(_cpu_seconds() - cpu0, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    write_json(args.out, result)
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
