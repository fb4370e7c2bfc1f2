"""What a committee costs per MD step, and whether a shared-trunk multi-head model is a cheaper one.

Part 1, cost (1 thread, CPU time and wall time per MD step = one energy + forces (+ uncertainty)
call of the ASE MLCalculator at new positions, pair list reused within its skin): ethanol (9
atoms) and alanine dipeptide (22 atoms) with models of the shipped size (PaiNN, 32 features, 2
interactions, 16 Bessel functions, 5 A; random weights: speed does not depend on them):
  single           one PaiNN (energy + forces, no uncertainty)
  committee        Ensemble of 4 PaiNN (energy + forces + per-atom force spread)
  multihead        painn_multihead: one PaiNN trunk, 4 readout heads (same outputs)
  single-fast      optimize_for_inference(single) (fused C++ kernel)
  committee-fast   optimize_for_inference(committee): 4 fast members
The methods are interleaved round by round; per step the median over rounds. Beside them,
committee_properties member by member (mlsim now) against one backward pass per member through
the scripted Ensemble's joint graph (mlsim before this benchmark, which found that each of those
backward passes cost about as much as all members' together).

Part 2, calibration: a 4-member committee and a 4-head model trained on the shipped ethanol
training set (B3LYP/6-31G*, 1000 structures, validation set for early stopping) under the SAME
CPU-time budget, each in its own process (1 thread, `nice -n 5`, run side by side), then scored
on the 300-frame test set (in distribution) and on the hot test set (ethanol sampled at 300-1000 K
by another sampler): force MAE, Spearman rank correlation of spread and error per atom and per
structure (max over atoms), the calibration scale (fitted on the hot set, and the one fitted on
the validation set with the ratio of predicted to observed RMS error it gives on the hot set).
The learn run's bootstrap committee (examples/ethanol/learn_run/iter_000, 20 wall-minutes) is
scored as a third row when present.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/committee.py [--train-cpu-min 10] [--rounds 5]
        [--skip-train] [--out runs/committee_bench]

Writes benchmarks/results/committee.json and prints a table.

Outcome (committee.json): the multi-head model is not kept in mlsim. Trained for the same CPU
time it fits better (it runs ~4x more epochs) but ranks its own errors worse (Spearman per atom
0.57 vs 0.67, per structure 0.75 vs 0.83 on the hot set), its spread is ~12x too small (scale
19 vs 1.6) and the scale fitted on validation data under-predicts the hot-set error by 28% (the
committee's by 11%): its heads share the trunk's features and disagree little away from the
data. Nor is it the cheaper committee per MD step: the inference-optimised 4-member committee
(optimize_for_inference, MLCalculator(fast=True)) costs ~1.2 ms for ethanol against ~8 ms. The
model class therefore lives here, with the experiment, not in mlsim.models.
"""

# No `from __future__ import annotations`: TorchScript needs the real annotations of the model.
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlsim._schema import Option
from mlsim.models._painn import _PaiNNTrunk
from mlsim.models._registry import register_architecture

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "committee.json"
ETHANOL = ROOT / "examples" / "ethanol"
BOOTSTRAP = ETHANOL / "learn_run" / "iter_000" / "train" / "model.pt"
SHIPPED = {"features": 32, "num_interactions": 2, "num_rbf": 16, "cutoff": 5.0}
HEADS = 4
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
COST_METHODS = ("single", "committee", "multihead", "single-fast", "committee-fast")


# ----------------------------------------------------------------- the multi-head experiment
# Not part of mlsim: measured here and not kept (see the module docstring), so it lives with the
# benchmark that measured it. Registered on import; the saved model.pt files are TorchScript and
# load without it.
@register_architecture(
    "painn_multihead",
    hyperparameters={
        "cutoff": Option("interaction cutoff radius, Angstrom", gt=0),
        "features": Option("width of the atom features", ge=1),
        "num_interactions": Option("message-passing layers (shared by all heads)", ge=1),
        "num_rbf": Option("radial basis functions", ge=1),
        "heads": Option("readout heads: the committee size", ge=2),
    },
)
class MultiHeadPaiNN(_PaiNNTrunk):
    """PaiNN trunk with `heads` readout MLPs; energy = mean over heads, spread = uncertainty.

    In training mode each structure of a batch is scored by one head drawn at random (torch's
    seeded generator), so each head fits its own random share of every epoch while the trunk
    sees all of it (trained on the heads' mean, their differences would get no gradient).
    `member_energies` makes it a committee for committee_properties, MLCalculator and evaluate.
    """

    cutoff: float
    elements: list[int]
    num_rbf: int
    heads: int
    hidden: int

    def __init__(
        self,
        elements: Sequence[int],
        self_energies: dict[int, float] | None = None,
        cutoff: float = 5.0,
        features: int = 64,
        num_interactions: int = 3,
        num_rbf: int = 20,
        heads: int = 4,
        energy_scale: float = 1.0,
    ) -> None:
        """PaiNNModel's trunk and `heads` readouts Linear(F, F//2) -> SiLU -> Linear(F//2, 1)."""
        super().__init__(elements, self_energies, energy_scale)
        self.build_trunk(cutoff, features, num_interactions, num_rbf)
        self.heads = int(heads)
        self.hidden = max(1, self.features // 2)
        # The K readouts stacked (two matrix products for all); nn.Linear's initialisation.
        k, f, h = self.heads, self.features, self.hidden
        b1, b2 = 1.0 / math.sqrt(f), 1.0 / math.sqrt(h)
        self.head_w1 = nn.Parameter(torch.empty(f, k * h).uniform_(-b1, b1))
        self.head_b1 = nn.Parameter(torch.empty(k * h).uniform_(-b1, b1))
        self.head_w2 = nn.Parameter(torch.empty(k, h).uniform_(-b2, b2))
        self.head_b2 = nn.Parameter(torch.empty(k).uniform_(-b2, b2))

    def head_outputs(self, s: Tensor) -> Tensor:
        """Per-atom outputs of every head, (K, N), from trunk features (N, F)."""
        h = torch.nn.functional.silu(s @ self.head_w1 + self.head_b1)
        h = h.view(s.shape[0], self.heads, self.hidden)
        return ((h * self.head_w2).sum(-1) + self.head_b2).t()

    def atomic_outputs_from_pairs(
        self,
        species: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Per-atom outputs (N,): the heads' mean, or in training one random head per structure."""
        out = self.head_outputs(self.trunk_features(species, positions, cell, batch, i, j, shifts))
        if self.training:
            pick = torch.randint(self.heads, (cell.shape[0],), device=out.device)
            return out.gather(0, pick[batch].unsqueeze(0)).squeeze(0)
        return out.mean(0)

    @torch.jit.export
    def member_energies_from_pairs(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Energies (eV) of every head, (K, B), from a half pair list (one trunk pass)."""
        species, pos, c = self.network_inputs(numbers, positions, cell)
        out = self.head_outputs(self.trunk_features(species, pos, c, batch, i, j, shifts))
        e_atom = self.energy_scale.forward(out) + self.atomic_shift.forward(species).unsqueeze(0)
        energy = torch.zeros(self.heads, cell.shape[0], dtype=e_atom.dtype, device=e_atom.device)
        return energy.index_add(1, batch, e_atom)

    @torch.jit.export
    def member_energies(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> Tensor:
        """Energies (eV) of every head, (K, B)."""
        i, j, shifts = self.half_pairs(positions, cell, pbc, batch)
        return self.member_energies_from_pairs(numbers, positions, cell, pbc, batch, i, j, shifts)


# ------------------------------------------------------------------------------------ cost
def _system(name: str) -> Any:
    """ASE Atoms of the benchmark molecule."""
    from ase import Atoms
    from ase.build import molecule

    if name == "ethanol":
        return molecule("CH3CH2OH")
    from openmm import app, unit

    from mlsim.testsystems._alanine import ALANINE_PDB

    pdb = app.PDBFile(str(ALANINE_PDB))
    pos = pdb.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    return Atoms(numbers=[a.element.atomic_number for a in pdb.topology.atoms()], positions=pos)


def _models(elements: list[int]) -> dict[str, Any]:
    """Scripted models of every cost method (fixed seed)."""

    from mlsim.models import build_model, optimize_for_inference

    torch.manual_seed(0)
    painn = {"architecture": "painn", "elements": elements, "hyperparameters": SHIPPED}
    specs = {
        "single": painn,
        "committee": {"architecture": "ensemble", "members": [painn] * HEADS},
        "multihead": {
            "architecture": "painn_multihead",
            "elements": elements,
            "hyperparameters": {**SHIPPED, "heads": HEADS},
        },
    }
    out = {k: torch.jit.script(build_model(s).eval()) for k, s in specs.items()}
    out["single-fast"] = optimize_for_inference(build_model(specs["single"]).eval())
    out["committee-fast"] = optimize_for_inference(build_model(specs["committee"]).eval())
    return out


def _path(positions: np.ndarray, steps: int, seed: int = 0) -> np.ndarray:
    """`steps` geometries oscillating by up to 0.05 A around `positions`, like thermal MD.

    Random weights give unphysical forces, so real MD with them would fly apart; these
    geometries change at every call (nothing cached) and stay within the pair list's skin.
    """
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, positions.shape)
    omega = rng.uniform(0.05, 0.3, positions.shape)
    k = np.arange(steps)[:, None, None]
    return positions[None] + 0.05 * np.sin(phase[None] + omega[None] * k)


def cost(rounds: int, steps: int) -> dict[str, Any]:
    """CPU and wall ms per energy+forces(+uncertainty) call, every method and molecule."""
    from mlsim.ase import MLCalculator

    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    for name in ("ethanol", "alanine dipeptide"):
        atoms0 = _system(name)
        models = _models(sorted(set(atoms0.numbers.tolist())))
        path = _path(atoms0.positions, steps)
        runs = {}
        for m, model in models.items():
            atoms = atoms0.copy()
            atoms.calc = MLCalculator(model)
            for x in path[:20]:  # warm-up: TorchScript's profiling runs, the first pair list
                atoms.positions = x
                atoms.get_forces()
            runs[m] = atoms
        cpu: dict[str, list[float]] = {m: [] for m in models}
        wall: dict[str, list[float]] = {m: [] for m in models}
        for _ in range(rounds):
            for m, atoms in runs.items():
                c0, w0 = time.process_time(), time.perf_counter()
                for x in path:
                    atoms.positions = x
                    atoms.get_forces()
                cpu[m].append((time.process_time() - c0) / steps * 1e3)
                wall[m].append((time.perf_counter() - w0) / steps * 1e3)
        rows = {}
        for m, atoms in runs.items():
            rows[m] = {
                "ms_cpu": statistics.median(cpu[m]),
                "ms_wall": statistics.median(wall[m]),
                "ms_cpu_rounds": cpu[m],
                "uncertainty": "forces_uncertainty" in atoms.calc.results,
            }
        base = rows["committee"]["ms_cpu"]
        for m in rows:
            rows[m]["cpu_vs_committee"] = rows[m]["ms_cpu"] / base
        result[name] = {
            "atoms": len(atoms0),
            "calls_per_round": steps,
            "methods": rows,
            "committee_paths": _committee_paths(models["committee"], atoms0, path, rounds),
        }
    return result


def _committee_paths(model: Any, atoms: Any, path: np.ndarray, rounds: int) -> dict[str, Any]:
    """committee_properties of the scripted committee: member by member (now) vs one backward
    pass per member through the Ensemble's joint graph (mlsim before this benchmark)."""
    from mlsim.models._uncertainty import _each_member, _joint
    from mlsim.neighbors import neighbor_list

    z = torch.as_tensor(atoms.numbers)
    cell, pbc = torch.zeros(1, 3, 3), torch.zeros(1, 3, dtype=torch.bool)
    batch = torch.zeros(len(atoms), dtype=torch.long)
    i, j, s = neighbor_list(atoms.positions, float(model.cutoff) + 0.5, None, False, full=False)
    pairs = tuple(torch.as_tensor(x, dtype=torch.long) for x in (i, j, s))
    xs = [torch.as_tensor(x, dtype=torch.float32) for x in path]
    cpu: dict[str, list[float]] = {"member_by_member": [], "joint_graph": []}
    for f in (_each_member, _joint):  # warm-up
        for x in xs[:20]:
            f(model, z, x, cell, pbc, batch, pairs)
    for _ in range(rounds):
        for name, f in (("member_by_member", _each_member), ("joint_graph", _joint)):
            c0 = time.process_time()
            for x in xs:
                f(model, z, x, cell, pbc, batch, pairs)
            cpu[name].append((time.process_time() - c0) / len(xs) * 1e3)
    out = {k: statistics.median(v) for k, v in cpu.items()}
    out["speedup"] = out["joint_graph"] / out["member_by_member"]
    return out


# -------------------------------------------------------------------------------- training
def _train_config(kind: str, out: Path) -> dict[str, Any]:
    """The ethanol committee's training settings (examples/ethanol/learn_train.yaml), per kind."""
    import yaml

    cfg = yaml.safe_load((ETHANOL / "learn_train.yaml").read_text())
    cfg.update(
        data=str(ETHANOL / "ethanol_train_dft.extxyz.gz"),
        val_data=str(ETHANOL / "ethanol_val_dft.extxyz.gz"),
        test_data=str(ETHANOL / "ethanol_test_dft.extxyz.gz"),
        output=str(out / kind),
        plots=False,
        threads=1,
    )
    if kind == "multihead":
        cfg["ensemble"] = 1
        cfg["model"] = {
            "architecture": "painn_multihead",
            "hyperparameters": {**cfg["model"]["hyperparameters"], "heads": HEADS},
        }
    else:
        cfg["ensemble"] = HEADS
    return cfg


def train_one(kind: str, out: Path, cpu_min: float) -> None:
    """Train `kind` until its process has used cpu_min CPU-minutes (checked after each epoch)."""
    import yaml

    from mlsim.train import Callback, load_config, train

    class CpuBudget(Callback):
        """Stop after the epoch in which this process's CPU time passes the budget."""

        def __init__(self, seconds: float) -> None:
            self.seconds = seconds
            self.start = time.process_time()

        def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
            used = time.process_time() - self.start
            row_cpu[0] = used
            if used >= self.seconds:
                trainer.stop("cpu_budget")

    row_cpu = [0.0]
    (out / kind).mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(_train_config(kind, out)))
    w0 = time.perf_counter()
    summary = train(load_config(path), progress=False, callbacks=[CpuBudget(60.0 * cpu_min)])
    (out / kind / "budget.json").write_text(
        json.dumps(
            {
                "cpu_s": time.process_time(),
                "train_cpu_s": row_cpu[0],
                "wall_s": time.perf_counter() - w0,
                "epochs": summary["epochs"],
                "stop_reason": summary["stop_reason"],
            }
        )
    )


def train_both(out: Path, cpu_min: float) -> None:
    """Both trainings side by side, each in its own niced one-thread process."""
    env = dict(os.environ, **ONE_THREAD)
    procs = [
        subprocess.Popen(
            ["nice", "-n", "5", sys.executable, __file__, "--train-one", kind, "--out", str(out)]
            + ["--train-cpu-min", str(cpu_min)],
            env=env,
        )
        for kind in ("committee", "multihead")
    ]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"training failed: {p.args}")


# ----------------------------------------------------------------------------- calibration
def score(model_path: Path) -> dict[str, Any]:
    """Accuracy and calibration of a committee model on the validation, test and hot sets."""
    from mlsim.data import read
    from mlsim.models import load_model
    from mlsim.models._uncertainty import calibrate, committee_errors, spearman

    model = load_model(model_path)
    row: dict[str, Any] = {}
    sets = {
        "val": "ethanol_val_dft.extxyz.gz",
        "test": "ethanol_test_dft.extxyz.gz",
        "hot": "ethanol_hot_test_dft.extxyz.gz",
    }
    res = {k: committee_errors(model, list(read(ETHANOL / f))) for k, f in sets.items()}
    val_scale = calibrate(res["val"]["force_std"], res["val"]["force_error"]).scale
    for k in ("test", "hot"):
        r = res[k]
        cal = calibrate(r["force_std"], r["force_error"])
        row[k] = {
            # committee_errors gives |F_ref - F| per atom; MAE is over force components.
            "force_mae_meV_per_A": _component_mae(model, list(read(ETHANOL / sets[k]))),
            "spearman_atom": cal.spearman,
            "spearman_structure": spearman(r["max_force_std"], r["max_force_error"]),
            "calibration_scale": cal.scale,
            "miscalibration_area": cal.miscalibration_area,
            "mean_force_std_meV_per_A": float(np.mean(r["force_std"]) * 1e3),
            "rms_error_predicted_with_val_scale_over_observed": float(
                np.sqrt(np.mean((val_scale * r["force_std"]) ** 2))
                / np.sqrt(np.mean(r["force_error"] ** 2))
            ),
        }
    row["val_calibration_scale"] = val_scale
    return row


def _component_mae(model: Any, structures: list[Any]) -> float:
    """Force MAE over components (meV/A), as `mlsim evaluate` reports it."""
    from mlsim.train import evaluate

    return float(evaluate(model, structures, progress=False)["force_mae_meV_per_A"])


# ------------------------------------------------------------------------------------ main
def _table(res: dict[str, Any]) -> str:
    lines = ["cost per MD step (1 thread; ms CPU / ms wall; x = CPU vs committee)"]
    for name, r in res["cost"].items():
        lines.append(f"  {name} ({r['atoms']} atoms)")
        for m, v in r["methods"].items():
            lines.append(
                f"    {m:15s} {v['ms_cpu']:8.3f} {v['ms_wall']:8.3f}  x{v['cpu_vs_committee']:.2f}"
                + ("" if v["uncertainty"] else "  (no uncertainty)")
            )
        p = r["committee_paths"]
        lines.append(
            f"    committee_properties, ms CPU: member by member {p['member_by_member']:.3f}, "
            f"joint graph (before) {p['joint_graph']:.3f}, x{p['speedup']:.2f}"
        )
    lines.append(
        "calibration (ethanol): train CPU-min, epochs | test MAE | hot MAE, Spearman atom/"
        "structure, scale, val-scale RMS ratio"
    )
    for name, r in res.get("calibration", {}).items():
        h, t = r["hot"], r["test"]
        lines.append(
            f"  {name:40s} {r['train_cpu_min'] or float('nan'):6.1f} {r['epochs']!s:>5} | "
            f"{t['force_mae_meV_per_A']:6.1f} | {h['force_mae_meV_per_A']:6.1f} "
            f"{h['spearman_atom']:5.2f} "
            f"{h['spearman_structure']:5.2f} {h['calibration_scale']:5.2f} "
            f"{h['rms_error_predicted_with_val_scale_over_observed']:5.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the cost measurement, the two trainings and the calibration; write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-cpu-min", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200, help="calls per round and method")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "committee_bench")
    ap.add_argument("--skip-train", action="store_true", help="score the models already in --out")
    ap.add_argument("--skip-cost", action="store_true", help="keep the cost part of the JSON")
    ap.add_argument("--train-one", choices=("committee", "multihead"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.train_one:
        train_one(args.train_one, args.out, args.train_cpu_min)
        return
    os.environ.update(ONE_THREAD)
    res: dict[str, Any] = {
        "benchmark": "committee",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "threads": 1,
        "heads": HEADS,
        "model": {"architecture": "painn", **SHIPPED},
    }
    if args.skip_cost and RESULTS.is_file():
        res["cost"] = json.loads(RESULTS.read_text())["cost"]
    else:
        res["cost"] = cost(args.rounds, args.steps)
    if not args.skip_train:
        train_both(args.out, args.train_cpu_min)
    cal: dict[str, Any] = {}
    for kind in ("committee", "multihead"):
        path = args.out / kind / "model.pt"
        if not path.is_file():
            continue
        budget = json.loads((args.out / kind / "budget.json").read_text())
        cal[f"{kind} ({args.train_cpu_min:g} CPU-min)"] = {
            "model": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "train_cpu_min": budget["train_cpu_s"] / 60.0,
            "train_wall_min": budget["wall_s"] / 60.0,
            "epochs": budget["epochs"],
            "note": budget.get("note", ""),
            **score(path),
        }
    if BOOTSTRAP.is_file():
        summary = json.loads((BOOTSTRAP.parent / "summary.json").read_text())
        cal["committee (learn bootstrap, 20 wall-min)"] = {
            "model": str(BOOTSTRAP.relative_to(ROOT)),
            "train_cpu_min": None,  # not recorded (its wall-clock budget ran on a loaded machine)
            "train_wall_min": summary["train_time_s"] / 60.0,
            "epochs": summary["epochs"],
            **score(BOOTSTRAP),
        }
    res["calibration"] = cal
    res["note"] = (
        "cost: ms per MLCalculator energy+forces(+uncertainty) call at new positions (what one MD "
        "step costs besides the integrator), medians over interleaved rounds; ms_cpu = process "
        "CPU time. calibration: hot = "
        "ethanol_hot_test_dft (300-1000 K, other sampler), test = ethanol_test_dft; Spearman of "
        "per-atom force spread vs |F_ref - F_mean| (atom) and of their maxima per structure; "
        "scale = ML fit of error = scale x spread on that set; val-scale RMS ratio = RMS of "
        "(scale fitted on the validation set x spread) / observed RMS error on the set."
    )
    from mlsim._fileio import write_json

    write_json(RESULTS, res)
    print(_table(res))


if __name__ == "__main__":
    main()
