"""Make the hot ethanol test set (900 K and 1000 K) for the active-learning goal, with B3LYP labels.

    OMP_WAIT_POLICY=PASSIVE nice -n 19 nohup .venv/bin/python examples/ethanol/make_hot_testset.py \
        >> /tmp/ethanol_hot_dft.log 2>&1 &

The frames come from a sampler that neither the shipped set nor `mlsim learn` uses: GFN2-xTB MD
with ASE's Bussi (stochastic velocity rescaling) thermostat instead of Langevin, 0.25 fs steps,
relaxation time 100 fs, seeds 301-302, 1 ps equilibration, one frame every 50 fs, 50 frames per
(temperature, seed): 200 structures. Each frame's bond graph is compared with ethanol's (with
hysteresis: broken beyond 1.5x the covalent radii sum, formed below 1.0x); a trajectory that
breaks a bond stops with an error rather than writing fragments as "ethanol".
Labels: B3LYP/6-31G*, density fitting (pyscf), as the shipped set.

Rerunning the same command resumes (sampling is skipped when the geometry file exists; the
labelling is `mlsim label`, which continues where a killed run stopped).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPERATURES = (900.0, 1000.0)
SEEDS = (301, 302)
FRAMES = 50  # per (temperature, seed)
TIMESTEP_FS = 0.25
EVERY = 200  # steps: 50 fs between kept frames
EQUILIBRATE_FS = 1000.0
TAUT_FS = 100.0


def _intact(numbers, positions, bonded) -> bool:
    """Whether the bond graph `bonded` still holds, with hysteresis so hot vibrations never trip it.

    A bond counts as broken beyond 1.5x the sum of covalent radii; a new bond as formed below 1.0x.
    """
    import numpy as np
    from ase.data import covalent_radii

    r = covalent_radii[numbers]
    ratio = np.linalg.norm(positions[:, None] - positions[None], axis=-1) / (r[:, None] + r[None])
    np.fill_diagonal(ratio, np.inf)
    return bool((ratio[bonded] < 1.5).all() and (ratio[~bonded] >= 1.0).all())


def _bond_matrix(numbers, positions):
    """Bonded pairs of a reference geometry: closer than 1.2x the sum of covalent radii."""
    import numpy as np
    from ase.data import covalent_radii

    r = covalent_radii[numbers]
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    bonded = d < 1.2 * (r[:, None] + r[None])
    np.fill_diagonal(bonded, False)
    return bonded


def sample_geometries(path: Path) -> None:
    """Run the seeded Bussi GFN2-xTB trajectories and write their frames to `path`."""
    import numpy as np
    from ase import units
    from ase.build import molecule
    from ase.md.bussi import Bussi
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from tblite.ase import TBLite
    from tqdm import tqdm

    from mlsim.data import Structure, write

    frames = []
    ref = molecule("CH3CH2OH")
    bonded = _bond_matrix(ref.numbers, ref.positions)
    for temp in TEMPERATURES:
        for seed in SEEDS:
            rng = np.random.default_rng([seed, int(temp)])
            atoms = ref.copy()
            atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
            thermalize_momenta(atoms, temp, rng=rng)
            Stationary(atoms)
            dyn = Bussi(
                atoms,
                timestep=TIMESTEP_FS * units.fs,
                temperature_K=temp,
                taut=TAUT_FS * units.fs,
                rng=rng,
            )
            n_eq = round(EQUILIBRATE_FS / TIMESTEP_FS)
            dyn.run(n_eq)
            for f in tqdm(range(FRAMES), desc=f"T={temp:g} seed {seed}", unit="frame"):
                dyn.run(EVERY)
                if not _intact(atoms.numbers, atoms.positions, bonded):
                    raise RuntimeError(f"T={temp} K seed {seed}: bond graph changed at frame {f}")
                frames.append(
                    Structure(
                        numbers=atoms.numbers.copy(),
                        positions=atoms.positions.copy(),
                        info={
                            "temperature_K": temp,
                            "seed": seed,
                            "trajectory": f"bussi-T{temp:g}-seed{seed}",
                            "md_calculator": "GFN2-xTB (Bussi thermostat)",
                            "time_fs": round((n_eq + (f + 1) * EVERY) * TIMESTEP_FS, 6),
                        },
                    )
                )
    write(path, frames)
    print(f"wrote {len(frames)} geometries to {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Sample once (in a one-thread child), then label with B3LYP/6-31G*; safe to rerun."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=1, help="pyscf threads (default 1)")
    p.add_argument("--xtb-stage", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.chdir(HERE.parent.parent)
    rel = HERE.relative_to(Path.cwd())
    geo = rel / "ethanol_hot_test_geometries.extxyz.gz"
    if args.xtb_stage:
        sample_geometries(geo)
        return 0
    if not geo.exists():
        # One OpenMP thread: a 9-atom xTB step is ~1 ms and spinning threads slow it 100x.
        import subprocess

        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        subprocess.run([sys.executable, __file__, "--xtb-stage"], env=env, check=True)
    from mlsim.cli import main as mlsim

    cmd = [
        "label", str(geo), "--method", "dft", "--functional", "b3lyp", "--basis", "6-31g*",
        "--threads", str(args.threads), "--shuffle", "0",
        "--out", str(rel / "ethanol_hot_test_dft.extxyz.gz"),
    ]  # fmt: skip
    print("$ mlsim " + " ".join(cmd), flush=True)
    return mlsim(cmd)


if __name__ == "__main__":
    sys.exit(main())
