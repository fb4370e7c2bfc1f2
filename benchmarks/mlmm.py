"""ML/MM speed: a ligand in a TIP3P box with the ligand ML (mechanical embedding) vs all-MM (GAFF2).

For ethanol (the shipped model, examples/ethanol/model.pt) and aspirin (no trained model exists:
a freshly initialised PaiNN of the shipped model's size for H, C, O, so only its speed means
anything), each solvated with 10 A padding and 0.15 M NaCl (mlsim.openmm.build_mlmm_system):
  am1bcc_s      AmberTools GAFF2 typing + AM1-BCC charges + parmchk2 + tleap (fresh cache)
  ns/day        LangevinMiddle at 1 fs (the ML ligand's hydrogens are not constrained), PME 9 A,
                OpenMM CPU platform and torch each on one thread; from process CPU time (the
                machine is shared: wall time swings with the neighbours' load) and wall time
  overhead      t(ML/MM step) / t(all-MM step) - 1
Rounds alternate ML/MM and all-MM; the best round of each is kept.

    .venv/bin/python benchmarks/mlmm.py [--steps 500] [--rounds 4]

Prints a table and writes benchmarks/results/mlmm.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mlsim
from mlsim._fileio import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mlmm.json"
# Shipped copy of runs/aspirin_xtb/model/model.pt, made by examples/mlmm/make_aspirin_model.py.
ASPIRIN_MODEL = ROOT / "examples" / "mlmm" / "aspirin_xtb_model.pt"
SHIPPED = ROOT / "examples" / "ethanol" / "model.pt"
LIGANDS = {"ethanol": "CCO", "aspirin": "CC(=O)Oc1ccccc1C(=O)O"}


def ligand_sdf(name: str, folder: Path) -> Path:
    """An RDKit (ETKDG + MMFF94) conformer of the ligand as SDF."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(LIGANDS[name]))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    return write_text(folder / f"{name}.sdf", Chem.MolToMolBlock(mol))


def model_for(name: str) -> tuple[torch.nn.Module, str]:
    """The shipped model for ethanol; for aspirin the xTB-trained one of
    examples/mlmm/make_aspirin_model.py when it exists, else an untrained PaiNN (timing only)."""
    from mlsim.models import PaiNNModel, load_model

    shipped = load_model(SHIPPED)
    if name == "ethanol":
        return shipped, f"shipped {SHIPPED.relative_to(ROOT)}"
    if name == "aspirin" and ASPIRIN_MODEL.is_file():
        return load_model(ASPIRIN_MODEL), (
            f"{ASPIRIN_MODEL.relative_to(ROOT)} (GFN2-xTB labels on GAFF2 MD at 300/600 K, "
            "examples/mlmm/make_aspirin_model.py)"
        )
    torch.manual_seed(0)
    model = PaiNNModel([1, 6, 8], cutoff=float(shipped.cutoff), features=32, num_interactions=2)
    return (
        torch.jit.script(model.eval()),
        "untrained PaiNN (H, C, O; 32 features, 2 interactions, 5 A cutoff): timing only, "
        "no trained aspirin model exists",
    )


def context(system, positions_a: np.ndarray, cell_a: np.ndarray):
    """A minimised context (CPU platform, 1 thread) with LangevinMiddle at 300 K, 1 fs."""

    from mlsim.openmm._engine import (
        langevin_integrator,
        make_context,
        minimize,
        set_positions,
        set_velocities,
    )

    integ = langevin_integrator(1.0, 300.0, 1.0, seed=1)
    ctx = make_context(system, integ, "CPU", threads=1)
    set_positions(ctx, positions_a, cell_a)
    minimize(ctx, 0.01, 200)
    set_velocities(ctx, 300.0, seed=1)
    integ.step(20)  # warm-up (TorchScript's first calls compile)
    return ctx, integ, ctx.getState(getPositions=True, getVelocities=True)


def time_steps(ctx, integ, start, steps: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for `steps` steps from the warmed-up state.

    Every round restarts there: the untrained aspirin model has no bound minimum and would leave
    physical territory after a few thousand steps, which changes nothing in the cost of a step.
    """
    ctx.setState(start)
    c0, w0 = time.process_time(), time.perf_counter()
    integ.step(steps)
    return time.process_time() - c0, time.perf_counter() - w0


def ns_per_day(seconds: float, steps: int, dt_fs: float = 1.0) -> float:
    """Simulated ns per day at this many seconds for `steps` steps of dt_fs."""
    return steps * dt_fs * 1e-6 / seconds * 86400.0


def density_runs(ligands: list[str], ps: float, folder: Path, out: Path) -> int:
    """NPT production of `ps` ps per ligand, ML/MM and all-MM (resumable in folder); merge the
    mean density (g/mL, after the first fifth) into the JSON's "density" entry."""
    import json

    from mlsim._fileio import write_json
    from mlsim.openmm import build_mlmm_system, read_ligand, run_mlmm

    torch.set_num_threads(1)
    result = json.loads(out.read_text()) if out.is_file() else {}
    rows = []
    for name in ligands:
        sdf = ligand_sdf(name, folder)
        lig = read_ligand(sdf)
        model, model_note = model_for(name)
        for label, m in (("mlmm", model), ("mm", None)):
            setup = build_mlmm_system(m, lig, cache_dir=folder / "cache", progress=False)
            run = folder / f"{name}_{label}"
            c0, w0 = time.process_time(), time.perf_counter()
            run_mlmm(
                setup, run, int(round(ps * 1000)), ensemble="npt", nvt_ps=10.0, npt_ps=10.0,
                seed=3, resume=(run / "checkpoint.chk").is_file(), progress=True,
                report_interval=500, checkpoint_interval=5000,
            )  # fmt: skip
            csv = np.genfromtxt(run / "state.csv", delimiter=",", names=True)
            rho = csv["Density_gmL"][len(csv) // 5 :]
            # block averages (5 blocks) for the error of the mean of correlated samples
            blocks = [b.mean() for b in np.array_split(rho, 5)]
            rows.append({
                "ligand": name, "system": label, "model": model_note if m is not None else None,
                "npt_ps": ps, "density_gmL": round(float(rho.mean()), 4),
                "density_sem_gmL": round(float(np.std(blocks, ddof=1) / np.sqrt(5)), 4),
                "n_atoms": setup.settings["n_atoms"],
                "cpu_s_this_call": round(time.process_time() - c0, 1),
                "wall_s_this_call": round(time.perf_counter() - w0, 1),
            })  # fmt: skip
            print(f"{name:8s} {label:5s} density {rows[-1]['density_gmL']:.4f} +- "
                  f"{rows[-1]['density_sem_gmL']:.4f} g/mL over {ps:g} ps NPT")  # fmt: skip
    result["density"] = {
        "rows": rows,
        "settings": "LangevinMiddle 300 K, 1/ps, 1 fs, Monte Carlo barostat 1 bar every 25 "
        "steps, 10 ps NVT + 10 ps NPT equilibration, then npt_ps of production; mean over "
        "the last four fifths, error from 5 block averages",
        "units": "g/mL",
    }
    write_json(out, result)
    return 0


def main() -> int:
    """Run the benchmark; print the table; write the JSON."""
    from mlsim.openmm import build_mlmm_system, parameterize_ligand, read_ligand

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500, help="MD steps per round and system")
    ap.add_argument("--rounds", type=int, default=4, help="rounds (best kept)")
    ap.add_argument("--ligands", nargs="+", default=list(LIGANDS), choices=list(LIGANDS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--density-ps",
        type=float,
        default=0.0,
        help="instead of timing: NPT density runs of this many ps (issue #19: 100), merged into --out",
    )
    ap.add_argument("--density-dir", type=Path, default=ROOT / "runs" / "mlmm_density")
    args = ap.parse_args()
    if args.density_ps > 0:
        args.density_dir.mkdir(parents=True, exist_ok=True)
        return density_runs(args.ligands, args.density_ps, args.density_dir, args.out)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.ligands:
            sdf = ligand_sdf(name, tmp)
            lig = read_ligand(sdf)
            t0 = time.perf_counter()
            parameterize_ligand(lig, cache_dir=tmp / "fresh_cache")
            am1bcc_s = time.perf_counter() - t0
            model, model_note = model_for(name)
            kw = dict(cache_dir=tmp / "fresh_cache", progress=False)
            mlmm = build_mlmm_system(model, lig, **kw)
            allmm = build_mlmm_system(None, lig, **kw)
            runs = {}
            for label, setup in (("mlmm", mlmm), ("mm", allmm)):
                runs[label] = context(setup.system, setup.positions, setup.cell)
            best = {k: (np.inf, np.inf) for k in runs}
            for _ in range(args.rounds):
                for label, (ctx, integ, start) in runs.items():
                    cpu, wall = time_steps(ctx, integ, start, args.steps)
                    best[label] = (min(best[label][0], cpu), min(best[label][1], wall))
            row = {
                "ligand": name,
                "smiles": LIGANDS[name],
                "n_atoms": mlmm.settings["n_atoms"],
                "ml_atoms": len(mlmm.ml_atoms),
                "n_water": mlmm.settings["n_water"],
                "box_A": mlmm.settings["box_A"],
                "model": model_note,
                "am1bcc_s": round(am1bcc_s, 2),
                "mlmm_ns_day_cpu": ns_per_day(best["mlmm"][0], args.steps),
                "mm_ns_day_cpu": ns_per_day(best["mm"][0], args.steps),
                "mlmm_ns_day_wall": ns_per_day(best["mlmm"][1], args.steps),
                "mm_ns_day_wall": ns_per_day(best["mm"][1], args.steps),
                "overhead_cpu": best["mlmm"][0] / best["mm"][0] - 1.0,
                "overhead_wall": best["mlmm"][1] / best["mm"][1] - 1.0,
            }
            rows.append(row)
            del runs
    load_after = os.getloadavg()
    header = (
        f"{'ligand':8s} {'atoms':>6s} {'ML':>3s} {'AM1-BCC s':>9s} {'ML/MM ns/day':>12s} "
        f"{'all-MM ns/day':>13s} {'overhead':>8s}   (CPU time; wall in brackets)"
    )
    print(header)
    for r in rows:
        print(
            f"{r['ligand']:8s} {r['n_atoms']:6d} {r['ml_atoms']:3d} {r['am1bcc_s']:9.1f} "
            f"{r['mlmm_ns_day_cpu']:7.1f} ({r['mlmm_ns_day_wall']:4.1f}) "
            f"{r['mm_ns_day_cpu']:7.1f} ({r['mm_ns_day_wall']:4.1f}) "
            f"{r['overhead_cpu']:7.0%} ({r['overhead_wall']:.0%})"
        )
    write_json(
        args.out,
        {
            "benchmark": "ML/MM (ligand ML, mechanical embedding) vs all-MM GAFF2 in TIP3P",
            "rows": rows,
            "settings": {
                "steps_per_round": args.steps,
                "rounds": args.rounds,
                "timestep_fs": 1.0,
                "integrator": "LangevinMiddle 300 K, 1/ps",
                "padding_A": 10.0,
                "ions_M": 0.15,
                "cutoff_A": 9.0,
                "water": "tip3p (rigid), HBonds constraints on the MM part",
                "threads": "OpenMM CPU platform 1 thread, torch 1 thread",
                "ml_backend": "auto (openmm-torch TorchForce)",
            },
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": load_after,
                "note": "shared 2-core machine; CPU-time figures are the comparable ones",
            },
            "versions": {
                "mlsim": mlsim.__version__,
                "torch": torch.__version__,
                "openmm": __import__("openmm").__version__,
                "ambertools": __import__("mlsim.openmm._gaff", fromlist=["x"]).ambertools_version(),
            },
            "units": "ns/day of simulated time; am1bcc_s: wall seconds; box_A: Angstrom; "
            "overhead: fraction (1.0 = twice the all-MM time per step)",
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
