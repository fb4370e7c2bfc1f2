"""Make the shipped ethanol data set: GFN2-xTB Langevin sampling, then GFN2-xTB and B3LYP/6-31G* labels.

    OMP_WAIT_POLICY=PASSIVE nice -n 19 nohup .venv/bin/python examples/ethanol/make_dataset.py \
        >> /tmp/ethanol_dft.log 2>&1 &

Rerunning the same command resumes: sampling is skipped when the geometry files exist, and every
labelling step is `mlsim label`, which continues where a killed run stopped. The DFT labels go in
phases (100 test, 300 train, all 300 test, all 1000 train, 50 validation) so a run cut short still
leaves both a held-out test set and a training set; within a file the order is seeded-random
(`--shuffle 0`), so a partial set covers both temperatures and all trajectories evenly.

Sampling (seeded, recorded in every frame's info): ethanol from ase.build.molecule, GFN2-xTB
(tblite), Langevin at 300 K and 600 K, 0.5 fs step, friction 0.01/fs, 1 ps equilibration, one frame
every 40 fs. Training pool: seeds 1-4 x 2 temperatures x 125 frames = 1000. Validation set (early
stopping and LR schedule, so all 1000 pool structures can train): seed 201 x 2 temperatures x 25
frames = 50. Held-out test set: independent trajectories, seeds 101-102 x 2 temperatures x 75
frames = 300.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPERATURES = (300.0, 600.0)
TRAIN_SEEDS = (1, 2, 3, 4)
TEST_SEEDS = (101, 102)
VAL_SEEDS = (201,)
TRAIN_FRAMES = 125  # per trajectory
TEST_FRAMES = 75
VAL_FRAMES = 25
EVERY = 80  # steps of 0.5 fs -> 40 fs between kept frames
SHUFFLE_SEED = 0  # DFT labelling order: seeded random, so any prefix covers both T and all seeds
DFT_PHASES = (("test", 100), ("train", 300), ("test", 300), ("train", 1000), ("val", 50))


def sample_geometries(path: Path, seeds: tuple[int, ...], n_frames: int) -> None:
    """Run the seeded GFN2-xTB Langevin trajectories and write the kept frames to `path`."""
    from ase.build import molecule
    from tblite.ase import TBLite

    from mlsim.data import Structure, sample, write

    start = Structure.from_atoms(molecule("CH3CH2OH"))
    frames = []
    for seed in seeds:
        ds = sample(
            start,
            lambda: TBLite(method="GFN2-xTB", verbosity=0),
            TEMPERATURES,
            n_frames,
            every=EVERY,
            timestep_fs=0.5,
            friction_per_fs=0.01,
            equilibration_fs=1000.0,
            seed=seed,
        )
        frames.extend(ds)
    write(path, frames)
    print(f"wrote {len(frames)} geometries to {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Sample (once), label with xTB, then label with DFT in phases; safe to rerun."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=2, help="pyscf threads (default 2)")
    p.add_argument("--skip-dft", action="store_true", help="only sample and xTB-label")
    p.add_argument("--xtb-stage", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.xtb_stage:
        # Sampling and xTB labelling run in a child with one OpenMP thread: a 9-atom xTB step is
        # ~1 ms, and threads spinning on a busy machine made it 100x slower in a measurement.
        import subprocess

        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        subprocess.run([sys.executable, __file__, "--xtb-stage"], env=env, check=True)
        if args.skip_dft:
            return 0
    os.chdir(HERE.parent.parent)  # repo root: the commands below use repo-relative paths
    from mlsim.cli import main as mlsim

    rel = HERE.relative_to(Path.cwd())
    geo = {
        "train": rel / "ethanol_train_geometries.extxyz.gz",
        "test": rel / "ethanol_test_geometries.extxyz.gz",
        "val": rel / "ethanol_val_geometries.extxyz.gz",
    }
    seeds = {
        "train": (TRAIN_SEEDS, TRAIN_FRAMES),
        "test": (TEST_SEEDS, TEST_FRAMES),
        "val": (VAL_SEEDS, VAL_FRAMES),
    }

    def run(cmd: list[str]) -> None:
        print("$ mlsim " + " ".join(cmd), flush=True)
        rc = mlsim(cmd)
        if rc != 0:
            sys.exit(rc)

    if args.xtb_stage:
        for part in ("test", "train", "val"):
            if not geo[part].exists():
                sample_geometries(geo[part], *seeds[part])
        for part in ("test", "train", "val"):
            out = rel / f"ethanol_{part}_xtb.extxyz.gz"
            run(["label", str(geo[part]), "--method", "xtb", "--out", str(out)])
        return 0

    for part, limit in DFT_PHASES:
        run(
            [
                "label", str(geo[part]), "--method", "dft", "--functional", "b3lyp", "--basis", "6-31g*",
                "--threads", str(args.threads), "--limit", str(limit), "--shuffle", str(SHUFFLE_SEED),
                "--out", str(rel / f"ethanol_{part}_dft.extxyz.gz"),
            ]
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
