"""Train a learned propagator on alanine-dipeptide MD (from make_trajectories.py); resumable.

    python examples/alanine/make_trajectories.py --out runs/ala --solvent obc2 \
        --constraints none --dt-fs 1 --interval-ps 0.5
    python examples/alanine/train_propagator.py --data runs/ala --tau-ps 20 --out runs/ala/prop.pt
    mlsim propagate sample alanine --model runs/ala/prop.pt --steps 2000 --out runs/ala/chain

The same as `mlsim propagate train alanine --data runs/ala/seed*.npz --tau-ps 20 --out ...`:
the Z-matrix and its rotatable torsions come from the bond graph (build_zmatrix), nothing here
is specific to alanine dipeptide (Propagator.for_molecule). --mode dihedrals (default) proposes the rotatable torsions
(phi, psi and the three methyl rotors) and is paired with HMC in the sampler; --mode full proposes
all 66 Cartesian degrees of freedom (Timewarp-like; needs far more training than a CPU affords to
reach useful acceptance).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mlsim.propagators import (
    Molecule,
    Propagator,
    make_pairs,
    read_trajectory,
    train_propagator,
)
from mlsim.testsystems import alanine_dipeptide


def main() -> int:
    """Parse arguments, build pairs at lag tau, train (resuming from OUT.ckpt), save OUT."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder with seed*.npz from make_trajectories")
    ap.add_argument("--out", required=True, help="model file to write")
    ap.add_argument("--tau-ps", type=float, default=20.0)
    ap.add_argument("--mode", choices=["dihedrals", "full"], default="dihedrals")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(1)

    files = sorted(Path(args.data).glob("seed*.npz"))
    if not files:
        raise SystemExit(f"no seed*.npz in {args.data}")
    ala = alanine_dipeptide(constraints=None)
    mol = Molecule.from_topology(ala.topology, ala.positions, "alanine")
    trajs, dt, solvent = [], None, "obc2"
    for f in files:
        with np.load(f) as d:
            st = json.loads(str(d["settings"])) if "settings" in d else {}
        if st.get("constraints", "none") != "none":
            raise SystemExit(f"{f}: propagator data must be unconstrained MD (--constraints none)")
        solvent = st.get("solvent", solvent)
        x, dt = read_trajectory(f, mol)  # Angstrom (older files in nm are converted)
        trajs.append(x)
    lag = round(args.tau_ps / dt)
    if lag < 1 or abs(lag * dt - args.tau_ps) > 1e-6:
        raise SystemExit(f"tau {args.tau_ps} ps is not a multiple of the {dt} ps frame interval")
    x0, x1 = make_pairs(trajs, lag)
    model = Propagator.for_molecule(
        mol, tau_ps=args.tau_ps, mode=args.mode, hidden=args.hidden, n_layers=args.layers,
        d_context=64,
    )  # fmt: skip
    out = Path(args.out)
    res = train_propagator(
        model, x0, x1, n_steps=args.steps, lr=2e-3, checkpoint=out.with_suffix(".ckpt")
    )
    extra = {"train_s": res.wall_s, "val_nll": res.val_nll, "n_pairs": len(x0)}
    model.save(out, extra={**extra, "target": "amber14", "solvent": solvent})
    print(f"trained {res.steps} steps in {res.wall_s:.0f} s, val NLL {res.val_nll:.3f} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
