"""Generate alanine-dipeptide MD trajectories (one per seed) for training and analysis.

Each seed writes ``<out>/seed<k>.dcd`` (positions, with the frame spacing in its header and in
``seed<k>.dcd.json``) and ``<out>/seed<k>.npz`` (positions in Angstrom, velocities in Angstrom/fs,
times in fs, atomic numbers, settings). Seeds whose .npz already exists are skipped, so an
interrupted run resumes where it stopped; files are written atomically (mlsim._fileio).

    python examples/alanine/make_trajectories.py --out data/alanine --seeds 0 1 2 3 --ns 1
    # data for mlsim.propagators (flexible bonds, 1 fs):
    python examples/alanine/make_trajectories.py --constraints none --dt-fs 1 --solvent obc2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlsim._fileio import atomic_path
from mlsim.testsystems import alanine_dipeptide, run_langevin, write_dcd
from mlsim.units import FS_PER_PS, positions_to_openmm


def main() -> int:
    """Parse arguments and run one MD trajectory per seed that is not on disk yet."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/alanine", help="output folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--ns", type=float, default=1.0, help="production length per seed (ns)")
    ap.add_argument("--interval-ps", type=float, default=1.0, help="time between saved frames")
    ap.add_argument("--equilibrate-ps", type=float, default=20.0)
    ap.add_argument("--solvent", choices=["vacuum", "obc2"], default="vacuum")
    ap.add_argument("--constraints", choices=["hbonds", "none"], default="hbonds")
    ap.add_argument("--dt-fs", type=float, default=2.0)
    ap.add_argument("--temperature", type=float, default=300.0)
    ap.add_argument("--platform", default="CPU")
    args = ap.parse_args()
    if args.constraints == "none" and args.dt_fs > 1.0:
        raise SystemExit("flexible X-H bonds need --dt-fs <= 1")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mol = alanine_dipeptide(args.solvent, None if args.constraints == "none" else "HBonds")
    interval = round(args.interval_ps * FS_PER_PS / args.dt_fs)
    n_frames = round(args.ns * 1000.0 / args.interval_ps)  # ps per ns
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "seeds")}
    for seed in tqdm(args.seeds, desc="seeds", unit="traj"):
        npz = out / f"seed{seed}.npz"
        if npz.exists():
            tqdm.write(f"seed {seed}: {npz} exists, skipping")
            continue
        fr = run_langevin(
            mol.system,
            mol.positions,
            n_frames * interval,
            interval,
            seed,
            temperature=args.temperature,
            dt_fs=args.dt_fs,
            platform=args.platform,
            equilibrate_steps=round(args.equilibrate_ps * FS_PER_PS / args.dt_fs),
            progress=True,
        )
        # DCD is OpenMM's format: convert at that boundary.
        write_dcd(
            out / f"seed{seed}.dcd",
            mol.topology,
            positions_to_openmm(fr.positions),
            args.interval_ps,
        )
        with atomic_path(npz, suffix=".npz") as tmp:
            np.savez_compressed(
                tmp,
                positions=fr.positions.astype(np.float32),
                velocities=fr.velocities.astype(np.float32),
                times_fs=fr.times_fs,
                numbers=mol.numbers,
                frame_interval_ps=args.interval_ps,
                settings=json.dumps({**settings, "seed": seed}),
            )
        tqdm.write(f"seed {seed}: {n_frames} frames in {fr.wall_s:.1f} s -> {npz}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
