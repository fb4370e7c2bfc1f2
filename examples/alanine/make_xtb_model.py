"""Train a cheap mlsim potential for alanine dipeptide on GFN2-xTB labels (vacuum).

The propagator benchmark needs an mlsim model of alanine dipeptide as its target; until the
B3LYP model of the active-learning work exists, this one stands in. Geometries: Amber14 (vacuum,
flexible bonds) Langevin MD at 300 K and 600 K, so that the Ramachandran basins and the barriers
between them are covered; labels: GFN2-xTB energies and forces (tblite); model: PaiNN per
train_xtb.yaml. Everything goes to runs/alanine_xtb/; rerunning skips finished steps.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python examples/alanine/make_xtb_model.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "runs" / "alanine_xtb"
TEMPERATURES = (300.0, 600.0)
SPLITS = {"train": (0, 1, 2, 3), "val": (10,), "test": (20,)}  # MD seeds per split
FRAMES = {"train": 125, "val": 50, "test": 50}  # per seed and temperature
EVERY_PS = 0.4


def geometries(split: str) -> Path:
    """Amber14 vacuum MD frames of one split (cached as extxyz)."""
    from mlsim.data import Structure, write
    from mlsim.testsystems import alanine_dipeptide, run_langevin

    path = OUT / f"{split}_geometries.extxyz.gz"
    if path.exists():
        return path
    mol = alanine_dipeptide("vacuum", constraints=None)
    frames = []
    for seed in SPLITS[split]:
        for temp in TEMPERATURES:
            n = FRAMES[split]
            every = round(EVERY_PS * 1000)
            fr = run_langevin(
                mol.system, mol.positions, n * every, every, seed, temperature=temp, dt_fs=1.0,
                equilibrate_steps=20_000, progress=True,
            )  # fmt: skip
            frames += [
                Structure(
                    mol.numbers, x, info={"seed": seed, "temperature_K": temp, "md": "amber14"}
                )
                for x in fr.positions
            ]
    OUT.mkdir(parents=True, exist_ok=True)
    write(path, frames)
    return path


def main() -> int:
    """Geometries, xTB labels, then `mlsim train train_xtb.yaml` (resumable)."""
    from mlsim.data import label
    from mlsim.train import load_config, train

    for split in SPLITS:
        out = OUT / f"{split}_xtb.extxyz.gz"
        label(geometries(split), out, "xtb", threads=1)
    cfg = load_config(HERE / "train_xtb.yaml")
    resume = (OUT / "model" / "checkpoint.pt").exists()
    if not (OUT / "model" / "model.pt").exists():
        summary = train(cfg, resume=resume)
        print({k: v for k, v in summary.items() if "mae" in k.lower()})
    print(f"model: {OUT / 'model' / 'model.pt'}; frames per split: "
          f"{ {s: len(SPLITS[s]) * len(TEMPERATURES) * FRAMES[s] for s in SPLITS} }")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
