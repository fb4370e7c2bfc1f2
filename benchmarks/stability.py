"""Long hot MD with a model: does every bond survive? (issue #14 goal a: 1 ns at 600 K, 100 ps at 1000 K)

Run: OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/stability.py MODEL
     [--runs 600:1000,1000:100] [--out-dir runs/stability] [--name ethanol_stability]

Each run is `mlsim.run_md` (OpenMM, Langevin 1/ps, 0.5 fs, the model's committee mean when it is a
committee) from the first ethanol test geometry, for TEMPERATURE:PICOSECONDS; it resumes from its
checkpoint when killed. run_md's geometry guard stops a run as soon as a bond of the starting
structure breaks (> 1.75x the covalent radii sum) or a new one forms, so a run that reaches its
last step kept every bond. The bond lengths of every frame are histogrammed per bond type
(C-C, C-O, C-H, O-H) beside those of the B3LYP-labelled hot test set.

Prints a table and writes benchmarks/results/<name>.json and <name>.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ETHANOL = ROOT / "examples" / "ethanol"
RESULTS = ROOT / "benchmarks" / "results"
TIMESTEP_FS = 0.5
REPORT_EVERY = 200  # steps between trajectory frames (0.1 ps)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _bond_types(numbers: np.ndarray, bonds: np.ndarray) -> list[str]:
    from ase.data import chemical_symbols

    order = {"C": 0, "O": 1, "N": 2, "H": 3}
    names = []
    for i, j in bonds:
        a, b = sorted((chemical_symbols[numbers[i]], chemical_symbols[numbers[j]]), key=order.get)
        names.append(f"{a}-{b}")
    return names


def _bond_lengths(frames: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """(n_frames, n_bonds) lengths in Angstrom of (n_frames, n_atoms, 3) positions."""
    return np.linalg.norm(frames[:, bonds[:, 0]] - frames[:, bonds[:, 1]], axis=-1)


def _trajectory_positions(folder: Path) -> np.ndarray:
    import mdtraj

    traj = mdtraj.load(str(folder / "trajectory.dcd"), top=str(folder / "topology.pdb"))
    return traj.xyz * 10.0  # nm -> Angstrom (mdtraj's unit)


def _plot(hists: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlsim._fileio import atomic_path

    types = sorted({t for h in hists.values() for t in h})
    fig, axes = plt.subplots(1, len(types), figsize=(3.4 * len(types), 3.2))
    for ax, t in zip(np.atleast_1d(axes), types, strict=True):
        for label, h in hists.items():
            if t in h:
                edges, counts = np.array(h[t]["edges"]), np.array(h[t]["density"])
                ax.step(edges[:-1], counts, where="post", label=label)
        ax.set(xlabel=f"{t} length (A)", ylabel="density", title=t)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _histograms(lengths: np.ndarray, types: list[str]) -> dict:
    out = {}
    for t in sorted(set(types)):
        cols = lengths[:, [k for k, name in enumerate(types) if name == t]].ravel()
        lo, hi = (0.8, 1.4) if t.endswith("-H") else (1.2, 1.9)
        density, edges = np.histogram(cols, bins=60, range=(lo, hi), density=True)
        out[t] = {
            "edges": [round(float(e), 4) for e in edges],
            "density": [round(float(d), 4) for d in density],
            "min": round(float(cols.min()), 4),
            "max": round(float(cols.max()), 4),
            "mean": round(float(cols.mean()), 4),
        }
    return out


def main() -> None:
    """Run (or resume) every MD run, then histogram the bonds; table, JSON and PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--runs", default="600:1000,1000:100", help="TEMPERATURE_K:PS,...")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "stability")
    parser.add_argument("--name", default="ethanol_stability")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from mlsim._fileio import write_json
    from mlsim._geometry_guard import GeometryGuard, SimulationBlowUp
    from mlsim.data import read
    from mlsim.openmm import run_md

    start = read(ETHANOL / "ethanol_test_dft.extxyz.gz")[0]
    guard = GeometryGuard.from_structure(start.numbers, start.positions)
    types = _bond_types(start.numbers, guard.bonds)
    runs = []
    for item in args.runs.split(","):
        t, ps = item.split(":")
        runs.append((float(t), float(ps)))

    hot = [s for s in read(ETHANOL / "ethanol_hot_test_dft.extxyz.gz")]
    hists = {"B3LYP hot test set (900/1000 K, xTB)": _histograms(
        _bond_lengths(np.stack([s.positions for s in hot]), guard.bonds), types)}  # fmt: skip
    rows = []
    for temp, ps in runs:
        folder = args.out_dir / f"{args.name}_{temp:g}K"
        steps = int(round(ps * 1000 / TIMESTEP_FS))
        resume = (folder / "checkpoint.chk").is_file()
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        status, message = "completed", ""
        try:
            result = run_md(
                str(args.model), start, folder, steps, timestep_fs=TIMESTEP_FS,
                temperature_k=temp, friction_per_ps=1.0, report_interval=REPORT_EVERY,
                checkpoint_interval=20 * REPORT_EVERY, seed=args.seed, resume=resume,
            )  # fmt: skip
            steps_done = result.steps
        except SimulationBlowUp as exc:
            status, message = "stopped", str(exc)
            steps_done = None
        frames = _trajectory_positions(folder)
        lengths = _bond_lengths(frames, guard.bonds)
        label = f"mlsim MD {temp:g} K"
        hists[label] = _histograms(lengths, types)
        rows.append({
            "temperature_K": temp,
            "target_ps": ps,
            "simulated_ps": round(len(frames) * REPORT_EVERY * TIMESTEP_FS / 1000, 2),
            "status": status,
            "message": message,
            "steps": steps_done,
            "frames": len(frames),
            "max_bond_stretch": round(float((lengths / guard.bond_lengths).max()), 3),
            "wall_s_this_call": round(time.perf_counter() - t0, 1),
            "cpu_s_this_call": round(_cpu_seconds() - cpu0, 1),
        })  # fmt: skip
    print(f"{'T (K)':>6s} {'ps':>8s} {'status':10s} {'max stretch':>11s}")
    for r in rows:
        print(
            f"{r['temperature_K']:6.0f} {r['simulated_ps']:8.1f} {r['status']:10s}"
            f" {r['max_bond_stretch']:11.3f}"
        )
    png = RESULTS / f"{args.name}.png"
    _plot(hists, png)
    write_json(
        RESULTS / f"{args.name}.json",
        {
            "benchmark": "stability",
            "model": str(args.model),
            "settings": {
                "engine": "mlsim.run_md (OpenMM, LangevinMiddle, friction 1/ps)",
                "timestep_fs": TIMESTEP_FS,
                "frame_every_steps": REPORT_EVERY,
                "bond_break_factor": guard.break_factor,
                "start": "first geometry of examples/ethanol/ethanol_test_dft.extxyz.gz",
            },
            "units": {"length": "Angstrom", "time": "ps", "stretch": "length / starting length"},
            "rows": rows,
            "bond_histograms": hists,
            "plot": png.name,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        },
    )
    print(f"wrote {RESULTS / args.name}.json and {png}")


if __name__ == "__main__":
    main()
