"""Make the held-out alanine-dipeptide test set: Amber14 MD at 300 K and 500 K, B3LYP/6-31G* labels.

    OMP_WAIT_POLICY=PASSIVE nice -n 19 nohup .venv/bin/python examples/alanine/make_testset.py \
        >> /tmp/alanine_dft.log 2>&1 &

The frames come from classical Amber14 MD (vacuum, flexible bonds, 1 fs, Langevin friction 1/ps)
on trajectories of their own (seeds 1001-1002 per temperature), so a model trained by
`mlsim learn` never sees them. One frame every 2 ps after 20 ps of equilibration, 100 per
temperature. Labels are B3LYP/6-31G* with density fitting (pyscf), the shipped ethanol recipe.

Rerunning the same command resumes: sampling is skipped when the geometry file exists, and the
labelling is `mlsim label`, which continues where a killed run stopped. It labels in a seeded
random order (`--shuffle 0`), so a partial set covers both temperatures evenly.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPERATURES = (300.0, 500.0)
SEEDS = (1001, 1002)
FRAMES = 50  # per (temperature, seed)
INTERVAL_PS = 2.0
EQUILIBRATE_PS = 20.0
DT_FS = 1.0


def sample_geometries(path: Path) -> None:
    """Run the seeded Amber14 trajectories and write their frames (Angstrom) to `path`."""
    from mlsim.data import Structure, write
    from mlsim.systems import alanine_dipeptide, simulate

    mol = alanine_dipeptide("vacuum", None)
    numbers = [a.element.atomic_number for a in mol.topology.atoms()]
    interval = round(INTERVAL_PS * 1000.0 / DT_FS)
    frames = []
    for temp in TEMPERATURES:
        for seed in SEEDS:
            fr = simulate(
                mol.system,
                mol.positions_nm,
                FRAMES * interval,
                interval,
                seed,
                temperature=temp,
                dt_fs=DT_FS,
                equilibrate_steps=round(EQUILIBRATE_PS * 1000.0 / DT_FS),
            )
            for x, t in zip(fr.positions_nm, fr.times_ps, strict=True):
                frames.append(
                    Structure(
                        numbers=numbers,
                        positions=x * 10.0,  # nm -> Angstrom (OpenMM boundary)
                        info={
                            "temperature_K": temp,
                            "seed": seed,
                            "trajectory": f"amber14-T{temp:g}-seed{seed}",
                            "md_calculator": "Amber14 (OpenMM, vacuum, no constraints)",
                            "time_fs": round(float(t) * 1000.0 + EQUILIBRATE_PS * 1000.0, 3),
                        },
                    )
                )
            print(f"T={temp:g} K seed {seed}: {FRAMES} frames", flush=True)
    write(path, frames)
    print(f"wrote {len(frames)} geometries to {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Sample once, then label with B3LYP/6-31G*; safe to rerun."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=1, help="pyscf threads (default 1)")
    p.add_argument("--limit", type=int, help="label only the first N (in shuffled order)")
    args = p.parse_args(argv)
    os.chdir(HERE.parent.parent)
    rel = HERE.relative_to(Path.cwd())
    geo = rel / "alanine_test_geometries.extxyz.gz"
    if not geo.exists():
        sample_geometries(geo)
    from mlsim.cli import main as mlsim

    cmd = [
        "label", str(geo), "--method", "dft", "--functional", "b3lyp", "--basis", "6-31g*",
        "--threads", str(args.threads), "--shuffle", "0",
        "--out", str(rel / "alanine_test_dft.extxyz.gz"),
    ]  # fmt: skip
    if args.limit is not None:
        cmd += ["--limit", str(args.limit)]
    print("$ mlsim " + " ".join(cmd), flush=True)
    return mlsim(cmd)


if __name__ == "__main__":
    sys.exit(main())
