"""`mlsim propagate`: sample with a trained learned propagator (exact MH, or exploration)."""

from __future__ import annotations

import argparse

NAME = "propagate"
HELP = "Sample a molecule with a learned propagator + Metropolis-Hastings; write DCD + JSON."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command-line options."""
    parser.add_argument("structure", help="PDB file (ACE-ALA-NME atom names), or 'alanine'")
    parser.add_argument("--model", required=True, help="propagator file from training")
    parser.add_argument("--steps", type=int, default=1000, help="MH steps (or cycles with HMC)")
    parser.add_argument("--out", default="propagate", help="output prefix: OUT.dcd, OUT.json")
    parser.add_argument("--solvent", choices=["vacuum", "obc2"], default="obc2")
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hmc-steps",
        type=int,
        default=20,
        help="velocity-Verlet steps per HMC move after each cycle (0: no HMC, full-mode models)",
    )
    parser.add_argument("--hmc-dt-fs", type=float, default=1.0)
    parser.add_argument("--mh-per-cycle", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="proposals drawn at once (no HMC)")
    parser.add_argument(
        "--exploration",
        action="store_true",
        help="accept every proposal (unadjusted, biased) unless energy rises > --max-rise-ev",
    )
    parser.add_argument("--max-rise-ev", type=float, default=1.0)
    parser.add_argument("--platform", default="CPU")


def run(args: argparse.Namespace) -> int:
    """Load structure + model, run the chain, write the trajectory and a JSON summary."""
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from mlsim.propagators import HMCKernel, OpenMMTarget, Propagator, run_propagator_chain
    from mlsim.systems import alanine_dipeptide, amber14_system, phi_psi, write_dcd

    if args.steps < 1:
        raise ValueError("--steps must be >= 1")
    torch.set_num_threads(1)
    if args.structure == "alanine":
        mol = alanine_dipeptide(args.solvent, constraints=None)
        topology, system, x_nm = mol.topology, mol.system, mol.positions_nm
    else:
        from openmm import app, unit

        if not Path(args.structure).exists():
            raise FileNotFoundError(f"structure file not found: {args.structure}")
        pdb = app.PDBFile(args.structure)
        topology = pdb.topology
        system = amber14_system(topology, args.solvent, constraints=None)
        x_nm = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    if not np.all(np.isfinite(x_nm)):
        raise ValueError("structure has NaN/inf coordinates")
    model = Propagator.load(args.model)
    if model.config.n_atoms != topology.getNumAtoms():
        raise ValueError(
            f"model is for {model.config.n_atoms} atoms, structure has {topology.getNumAtoms()}"
        )
    from mlsim.propagators import alanine_zmatrix

    z = alanine_zmatrix(topology)
    if tuple(z.roots) != tuple(model.config.zmatrix_roots) or [tuple(r) for r in z.rows] != [
        tuple(r) for r in model.config.zmatrix_rows
    ]:
        raise ValueError("structure atom order does not match the model's Z-matrix")
    target = OpenMMTarget(system, args.temperature, args.platform)
    hmc = None
    if args.hmc_steps > 0:
        hmc = HMCKernel(
            system, args.temperature, args.hmc_dt_fs, args.hmc_steps, args.seed, args.platform
        )
    res = run_propagator_chain(
        model,
        target,
        x_nm * 10.0,
        args.steps,
        seed=args.seed,
        batch=args.batch,
        exploration=args.exploration,
        max_energy_rise_ev=args.max_rise_ev,
        hmc=hmc,
        mh_per_cycle=args.mh_per_cycle,
        progress=True,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dcd = write_dcd(out.with_suffix(".dcd"), topology, res.states / 10.0, model.config.tau_ps)
    energies = -res.log_target / target.beta
    summary = {
        "structure": args.structure,
        "model": str(args.model),
        "mode": "exploration (unadjusted)" if args.exploration else "Metropolis-Hastings (exact)",
        "proposal": model.config.mode,
        "tau_ps": model.config.tau_ps,
        "steps": args.steps,
        "hmc_steps": args.hmc_steps,
        "acceptance_rate": res.acceptance_rate,
        "hmc_acceptance": res.hmc_acceptance,
        "wall_s": res.wall_s,
        "energy_ev_mean": float(np.mean(energies)),
        "energy_ev_std": float(np.std(energies)),
        "trajectory": str(dcd),
    }
    try:
        ang = np.degrees(phi_psi(res.states, topology))
        summary["phi_deg_mean"] = float(ang[:, 0].mean())
        summary["psi_deg_mean"] = float(ang[:, 1].mean())
    except ValueError:
        pass
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0
