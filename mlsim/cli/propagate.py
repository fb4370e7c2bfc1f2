"""`mlsim propagate`: learned propagators for any molecule, `train` on MD and `sample` (exact MH).

    mlsim propagate train STRUCTURE --data traj.dcd --tau-ps 5 --out prop.pt [--target T]
    mlsim propagate train STRUCTURE --md-ps 500 --tau-ps 5 --out prop.pt --target T
    mlsim propagate train S1 S2 S3 --md-ps 500 --out transfer.pt --target amber14
    mlsim propagate sample STRUCTURE --model prop.pt [--target T] --steps 2000 --out chain

STRUCTURE is a PDB (bonds from CONECT records / residue templates), an SDF/MOL file, any file ASE
reads (bonds perceived from covalent radii), or a shipped test system name ("alanine",
"ace-val-nme", ...). Several structures (or --transfer) train one transferable torsion proposal
(TransferPropagator) that `sample` applies to molecules it never saw.
The older form `mlsim propagate STRUCTURE --model M ...` still works: it is `sample`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "propagate"
HELP = "Learned propagators for any molecule: train on MD, sample with exact Metropolis-Hastings."

_TARGET_HELP = (
    "the energy the chain samples: 'amber14' (a PDB with standard residues, see --solvent), an "
    "mlsim model (MODEL.pt), or a serialized OpenMM System with flexible bonds (SYSTEM.xml); "
    "sample defaults to the target the propagator was trained with"
)
_EPILOG = """\
subcommands:
  train    fit a propagator to MD of one molecule, or a transferable one to MD of several
           (--data files, or --md-ps to run MD here)
  sample   run the Metropolis-Hastings chain with a trained propagator (a transferable one on
           any molecule); writes OUT.dcd/.json/.pdb

`mlsim propagate STRUCTURE --model M ...` (no subcommand) is the older form of `sample`.
See `mlsim propagate train --help` and `mlsim propagate sample --help`.
"""


class _SubcommandsOrStructure(argparse._SubParsersAction):
    """Subcommands train/sample, where an unknown first word is the STRUCTURE of the older
    `mlsim propagate STRUCTURE --model M` form (run as `sample`)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        """Dispatch to the subcommand's parser; route the older form to `sample`."""
        if values and values[0] not in self._name_parser_map:
            values = ["sample", *values]
            namespace.older_form = True
        super().__call__(parser, namespace, values, option_string)


def _common(p: argparse.ArgumentParser, many: bool = False) -> None:
    """Options shared by train and sample (train takes several structures)."""
    what = (
        "PDB / SDF / MOL / XYZ / extxyz file (bonds from the file or perceived), or a test system "
        "name: alanine, ace-val-nme, ..."
    )
    if many:
        p.add_argument(
            "structure", nargs="+", help=what + "; several: train one transferable proposal"
        )
    else:
        p.add_argument("structure", help=what)
    p.add_argument("--target", default=None, help=_TARGET_HELP)
    p.add_argument(
        "--solvent",
        choices=["vacuum", "obc2"],
        default=None,
        help="solvent for --target amber14 (default: as trained, else obc2)",
    )
    p.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--platform", default="CPU", help="OpenMM platform (default CPU)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `train` and `sample` subcommands (and the older STRUCTURE form)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    sub = parser.add_subparsers(
        dest="propagate_action",
        metavar="{train,sample}",
        action=_SubcommandsOrStructure,
        required=True,
    )
    sub.choices = None  # any first word is accepted: an unknown one is a structure (older form)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser(
        "train", help="fit a propagator to MD of one molecule or of several", formatter_class=fmt
    )
    _common(t, many=True)
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data",
        nargs="+",
        help="training trajectories: npz (positions in Angstrom), DCD/XTC, extxyz. One "
        "structure: each file is one trajectory of it. Several structures: one entry per "
        "structure, in the same order, each a comma-separated list of its trajectories",
    )
    src.add_argument("--md-ps", type=float, help="run this much Langevin MD per run on --target")
    t.add_argument("--out", required=True, help="propagator file to write (.pt)")
    t.add_argument(
        "--tau-ps",
        type=float,
        default=None,
        help="lag time tau of the propagator (required for one molecule); transfer: 0 (default) "
        "learns each torsion's equilibrium distribution given its neighbours, > 0 the "
        "distribution tau later given the current angle",
    )
    t.add_argument(
        "--frame-interval-ps",
        type=float,
        default=None,
        help="time between frames of the --data files when they do not store it",
    )
    t.add_argument(
        "--mode",
        choices=["dihedrals", "full"],
        default="dihedrals",
        help="one-molecule propagator: dihedrals proposes the rotatable torsions (pair with HMC "
        "in sample); full: all 3n coordinates",
    )
    t.add_argument(
        "--transfer",
        action="store_true",
        help="train a transferable torsion proposal (the default for several structures), "
        "usable on molecules it never saw",
    )
    t.add_argument("--bins", type=int, default=72, help="transfer: histogram bins per torsion")
    t.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--layers", type=int, default=6, help="coupling layers (even)")
    t.add_argument("--context", type=int, default=64, help="context vector size")
    t.add_argument("--md-runs", type=int, default=1, help="independent MD runs (seeds)")
    t.add_argument("--md-dt-fs", type=float, default=1.0, help="MD time step (flexible bonds)")
    t.add_argument("--md-interval-ps", type=float, default=0.5, help="time between saved frames")
    t.add_argument("--md-equilibrate-ps", type=float, default=10.0)

    s = sub.add_parser(
        "sample", help="sample with a trained propagator (exact MH)", formatter_class=fmt
    )
    _common(s)
    s.add_argument("--model", required=True, help="propagator file from `mlsim propagate train`")
    s.add_argument("--steps", type=int, default=1000, help="MH steps (or cycles with HMC)")
    s.add_argument("--out", default="propagate", help="output prefix: OUT.dcd, OUT.json, OUT.pdb")
    s.add_argument(
        "--hmc-steps",
        type=int,
        default=20,
        help="velocity-Verlet steps per HMC move after each cycle (0: no HMC, full-mode models)",
    )
    s.add_argument("--hmc-dt-fs", type=float, default=1.0)
    s.add_argument("--mh-per-cycle", type=int, default=4)
    s.add_argument("--batch", type=int, default=16, help="proposals drawn at once (no HMC)")
    s.add_argument(
        "--exploration",
        action="store_true",
        help="accept every proposal (unadjusted, biased) unless energy rises > --max-rise-ev",
    )
    s.add_argument("--max-rise-ev", type=float, default=1.0)


def run(args: argparse.Namespace) -> int:
    """Run `train` or `sample`."""
    import torch

    torch.set_num_threads(1)
    if getattr(args, "older_form", False):
        print(
            "mlsim propagate: note: `mlsim propagate STRUCTURE --model M` is now "
            "`mlsim propagate sample STRUCTURE --model M`",
            file=sys.stderr,
        )
    if args.propagate_action == "train":
        return _train(args)
    return _sample(args)


# --- shared ----------------------------------------------------------------------------------
def _molecule(structure: str, solvent: str):
    """The Molecule for a structure file or a test-system name."""
    from mlsim.propagators import Molecule, load_molecule
    from mlsim.testsystems import TESTSYSTEMS, get_testsystem

    if structure.strip().lower() in TESTSYSTEMS and not Path(structure).exists():
        ms = get_testsystem(structure, solvent, None)
        return Molecule.from_topology(ms.topology, ms.positions, structure)
    mol = load_molecule(structure)
    if mol.n_atoms < 3:
        raise ValueError(f"{structure}: a propagator needs a molecule of at least 3 atoms")
    return mol


def _target(spec: str, mol, solvent: str, temperature: float, platform: str):
    """Build the target named by --target for this molecule."""
    from mlsim.propagators import ModelTarget, OpenMMTarget

    other = (
        "for other molecules give --target MODEL.pt (an mlsim potential) or --target SYSTEM.xml "
        "(a serialized OpenMM System with flexible bonds)"
    )
    if spec == "amber14":
        from mlsim.testsystems import amber14_system

        if mol.topology is None:
            raise ValueError(
                "--target amber14 needs a PDB with standard residue names (or a test system); "
                + other
            )
        try:
            system = amber14_system(mol.topology, solvent, constraints=None)
        except ValueError as exc:
            raise ValueError(f"{exc}; {other}") from exc
        return OpenMMTarget(system, temperature, platform)
    path = Path(spec)
    if path.suffix.lower() == ".xml":
        target = OpenMMTarget.from_xml(path, temperature, platform)
        if target.n_atoms != mol.n_atoms:
            raise ValueError(
                f"{path} is a System of {target.n_atoms} particles; the structure has "
                f"{mol.n_atoms} atoms"
            )
        return target
    if path.suffix.lower() == ".pt":
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found")
        return ModelTarget(path, mol.numbers, temperature)
    raise ValueError(f"--target {spec!r}: give amber14, an mlsim model (.pt) or a System (.xml)")


def _target_record(spec: str | None) -> str | None:
    """--target as stored with a model: files by absolute path, so sample finds them anywhere."""
    if spec is None or spec == "amber14":
        return spec
    return str(Path(spec).resolve())


def _prefix(out: str, suffix: str) -> Path:
    """OUT + suffix (not Path.with_suffix, which would eat a dot in OUT's name)."""
    p = Path(out)
    return p.parent / (p.name + suffix)


# --- train -------------------------------------------------------------------------------------
def _md_trajectories(args, target, mol, structure: str, tag: str = "") -> tuple[list, float]:
    """Run (or reuse) --md-runs Langevin trajectories on the target; frames in Angstrom.

    Cached in OUT.md/ (per structure `tag` when several are trained together)."""
    import json

    import numpy as np

    from mlsim._fileio import atomic_path
    from mlsim.propagators import OpenMMTarget
    from mlsim.units import FS_PER_PS

    if args.md_ps <= 0 or args.md_dt_fs <= 0 or args.md_interval_ps <= 0 or args.md_runs < 1:
        raise ValueError("--md-ps, --md-dt-fs, --md-interval-ps and --md-runs must be positive")
    interval = round(args.md_interval_ps * FS_PER_PS / args.md_dt_fs)
    if interval < 1 or abs(interval * args.md_dt_fs - args.md_interval_ps * FS_PER_PS) > 1e-6:
        raise ValueError("--md-interval-ps must be a multiple of --md-dt-fs")
    n_frames = max(2, round(args.md_ps / args.md_interval_ps))
    equil = round(args.md_equilibrate_ps * FS_PER_PS / args.md_dt_fs)
    cache = _prefix(args.out, ".md") / tag if tag else _prefix(args.out, ".md")
    cache.mkdir(parents=True, exist_ok=True)
    settings = {
        "target": str(args.target), "solvent": args.solvent, "temperature": args.temperature,
        "dt_fs": args.md_dt_fs, "interval_ps": args.md_interval_ps, "frames": n_frames,
        "equilibrate_ps": args.md_equilibrate_ps, "structure": structure,
    }  # fmt: skip
    trajs = []
    for k in range(args.md_runs):
        seed = args.seed + k
        path = cache / f"seed{seed}.npz"
        if path.exists():
            with np.load(path) as d:
                if json.loads(str(d["settings"])) == {**settings, "seed": seed}:
                    trajs.append(np.asarray(d["positions"], dtype=np.float64))
                    print(f"reusing MD {path}", file=sys.stderr)
                    continue
        if isinstance(target, OpenMMTarget):
            from mlsim.testsystems import run_langevin

            x = run_langevin(
                target.system, mol.positions, n_frames * interval, interval, seed,
                temperature=args.temperature, dt_fs=args.md_dt_fs, platform=args.platform,
                equilibrate_steps=equil, progress=True,
            ).positions  # fmt: skip
        else:
            x = _ase_langevin(target, mol, n_frames, interval, equil, seed, args)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(
                tmp, positions=x, numbers=mol.numbers, frame_interval_ps=args.md_interval_ps,
                settings=json.dumps({**settings, "seed": seed}),
            )  # fmt: skip
        trajs.append(x)
    return trajs, float(args.md_interval_ps)


def _ase_langevin(target, mol, n_frames: int, interval: int, equil: int, seed: int, args):
    """Langevin MD (friction 1/ps) with ASE on an mlsim model target; frames (T, n, 3) Angstrom."""
    import numpy as np
    from ase import Atoms, units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from tqdm import tqdm

    from mlsim.ase import MLCalculator
    from mlsim.units import FS_PER_PS

    atoms = Atoms(numbers=mol.numbers, positions=mol.positions)
    atoms.calc = MLCalculator(target.model)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=rng)
    dyn = Langevin(
        atoms, args.md_dt_fs * units.fs, temperature_K=args.temperature,
        friction=1.0 / (FS_PER_PS * units.fs), rng=rng,  # 1/ps
    )  # fmt: skip
    if equil:
        dyn.run(equil)
    xs = np.empty((n_frames, mol.n_atoms, 3))
    for i in tqdm(range(n_frames), desc=f"MD seed {seed}", unit="frame", leave=False):
        dyn.run(interval)
        xs[i] = atoms.positions
    if not np.all(np.isfinite(xs)):
        raise RuntimeError("MD blew up (non-finite positions); reduce --md-dt-fs")
    return xs


def _train(args: argparse.Namespace) -> int:
    """Train a one-molecule propagator, or a transferable one (several structures/--transfer)."""
    if args.steps < 1:
        raise ValueError("--steps must be positive")
    if len(args.structure) > 1 or args.transfer:
        args.tau_ps = 0.0 if args.tau_ps is None else args.tau_ps
        if args.tau_ps < 0:
            raise ValueError("--tau-ps must be >= 0")
        return _train_transfer(args)
    if args.tau_ps is None or args.tau_ps <= 0:
        raise ValueError("--tau-ps must be given and positive for a one-molecule propagator")
    return _train_one(args, args.structure[0])


def _read_data(files: list[str], mol, frame_interval_ps: float | None) -> tuple[list, float]:
    """Trajectories (Angstrom) of one molecule from files, and their common frame spacing (ps)."""
    import numpy as np

    from mlsim.propagators import read_trajectory

    trajs, spacings = [], []
    for f in files:
        x, dt = read_trajectory(f, mol, frame_interval_ps)
        trajs.append(x)
        spacings.append(dt)
    if not np.allclose(spacings, spacings[0], rtol=1e-4):
        raise ValueError(f"the --data files have different frame spacings: {spacings} ps")
    return trajs, spacings[0]


def _lag(tau_ps: float, dt: float) -> int:
    """Frames per tau, checking that tau is a multiple of the frame spacing."""
    lag = round(tau_ps / dt)
    if lag < 1 or abs(lag * dt - tau_ps) > 1e-6 * max(1.0, tau_ps):
        raise ValueError(f"--tau-ps {tau_ps} is not a multiple of the {dt:g} ps frame spacing")
    return lag


def _train_one(args: argparse.Namespace, structure: str) -> int:
    """Build the Z-matrix from the bond graph, make pairs at lag tau, train, save."""
    import json

    from mlsim.propagators import Propagator, make_pairs, train_propagator

    solvent = args.solvent or "obc2"
    mol = _molecule(structure, solvent)
    model = Propagator.for_molecule(
        mol, args.tau_ps, args.mode, hidden=args.hidden, n_layers=args.layers,
        d_context=args.context, seed=args.seed,
    )  # fmt: skip
    cfg = model.config
    if args.data:
        trajs, dt = _read_data(args.data, mol, args.frame_interval_ps)
    else:
        if args.target is None:
            raise ValueError("--md-ps needs --target (the energy to run MD on)")
        target = _target(args.target, mol, solvent, args.temperature, args.platform)
        trajs, dt = _md_trajectories(args, target, mol, structure)
    x0, x1 = make_pairs(trajs, _lag(args.tau_ps, dt))
    if len(x0) < 2:
        raise ValueError(f"only {len(x0)} pair(s) at lag tau; give longer trajectories")
    out = Path(args.out)
    res = train_propagator(
        model, x0, x1, n_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        checkpoint=_prefix(args.out, ".ckpt"), seed=args.seed,
    )  # fmt: skip
    extra = {
        "train_s": res.wall_s, "steps": res.steps, "train_nll": res.train_nll,
        "val_nll": res.val_nll, "n_pairs": int(len(x0)), "frame_interval_ps": dt,
        "structure": str(structure), "formula": mol.graph.formula,
        "bonds_from": mol.graph.source, "target": _target_record(args.target),
        "solvent": solvent,
        "temperature": args.temperature,
        "proposed_torsions": [list(cfg.zmatrix_rows[r]) for r in cfg.dihedral_rows],
    }  # fmt: skip
    model.save(out, extra=extra)
    summary = {"model": str(out), "mode": cfg.mode, "tau_ps": cfg.tau_ps, **extra}
    print(json.dumps(summary, indent=2))
    return 0


def _train_transfer(args: argparse.Namespace) -> int:
    """One transferable torsion proposal from MD of every structure (see TransferPropagator)."""
    import json

    from mlsim.propagators import TransferPropagator, train_transfer

    if args.mode != "dihedrals":
        raise ValueError("a transferable propagator proposes torsions only; drop --mode full")
    solvent = args.solvent or "obc2"
    if args.data and len(args.structure) > 1 and len(args.data) != len(args.structure):
        raise ValueError(
            f"{len(args.structure)} structures but {len(args.data)} --data entries: give one "
            "entry per structure, in the same order (comma-separate several trajectories)"
        )
    data, described = [], []
    for k, structure in enumerate(args.structure):
        mol = _molecule(structure, solvent)
        if args.data:
            files = args.data if len(args.structure) == 1 else args.data[k].split(",")
            trajs, dt = _read_data([f for f in files if f], mol, args.frame_interval_ps)
        else:
            if args.target is None:
                raise ValueError("--md-ps needs --target (the energy to run MD on)")
            target = _target(args.target, mol, solvent, args.temperature, args.platform)
            tag = f"{k}_{Path(structure).stem}"
            trajs, dt = _md_trajectories(args, target, mol, structure, tag)
        if args.tau_ps > 0:
            _lag(args.tau_ps, dt)
        try:
            from mlsim.propagators._torsions import torsion_set

            n_torsions = torsion_set(mol.graph, mol.positions).n_torsions
        except ValueError as exc:
            raise ValueError(f"{structure}: {exc}") from exc
        data.append((mol, trajs, dt))
        described.append({"structure": str(structure), "formula": mol.graph.formula,
                          "torsions": n_torsions, "frames": int(sum(len(t) for t in trajs)),
                          "frame_interval_ps": dt})  # fmt: skip
    model = TransferPropagator(
        tau_ps=args.tau_ps, hidden=args.hidden, n_bins=args.bins, seed=args.seed
    )
    res = train_transfer(
        model, data, n_steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    extra = {
        "train_s": res.wall_s, "train_cpu_s": res.cpu_s, "steps": res.steps,
        "train_nll_per_torsion": res.train_nll, "val_nll_per_torsion": res.val_nll,
        "n_examples": res.n_examples, "molecules": described,
        "target": _target_record(args.target), "solvent": solvent,
        "temperature": args.temperature,
    }  # fmt: skip
    model.save(args.out, extra=extra)
    print(json.dumps({"model": str(args.out), "kind": "transfer", "tau_ps": args.tau_ps, **extra},
                     indent=2))  # fmt: skip
    return 0


# --- sample ------------------------------------------------------------------------------------
def _load_model(path: str):
    """A Propagator or a TransferPropagator, whichever the file holds."""
    import torch

    from mlsim.propagators import Propagator, TransferPropagator
    from mlsim.propagators._transfer import is_transfer_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no propagator model at {p}")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for files that are not its own
        raise ValueError(f"{p} is not an mlsim propagator file ({type(exc).__name__})") from exc
    if is_transfer_file(payload):
        return TransferPropagator.load(p)
    return Propagator.load(p)


def _sample(args: argparse.Namespace) -> int:
    """Load structure + model, check they match, run the chain, write DCD + JSON + PDB."""
    import json

    import numpy as np
    from openmm import app, unit

    from mlsim._fileio import atomic_write, write_json
    from mlsim.propagators import TransferPropagator, make_hmc, run_propagator_chain
    from mlsim.testsystems import phi_psi, write_dcd
    from mlsim.units import positions_to_openmm

    if args.steps < 1:
        raise ValueError("--steps must be >= 1")
    model = _load_model(args.model)
    transfer = isinstance(model, TransferPropagator)
    extra = getattr(model, "extra", {}) or {}
    solvent = args.solvent or extra.get("solvent") or "obc2"
    mol = _molecule(args.structure, solvent)
    if not np.all(np.isfinite(mol.positions)):
        raise ValueError("structure has NaN/inf coordinates")
    notes = []
    if transfer:
        unseen = model.unseen_elements(mol)
        if unseen:
            # MH keeps the chain exact whatever the proposal; only its efficiency is at stake.
            notes.append(
                f"elements {unseen} (Z) were in no training molecule: proposals for their "
                "torsions are extrapolated (the chain stays exact, acceptance may be low)"
            )
            print(f"mlsim propagate: note: {notes[-1]}", file=sys.stderr)
        if args.hmc_steps < 1 and not args.exploration:
            raise ValueError(
                "a transferable propagator proposes torsions only, which is not ergodic on its "
                "own: use --hmc-steps >= 1"
            )
        sampler_model = model.bind(mol)
        tau_ps, proposal_kind = model.config.tau_ps, "transfer (torsions)"
    else:
        model.config.check_graph(mol.graph)
        sampler_model, tau_ps, proposal_kind = model, model.config.tau_ps, model.config.mode
    spec = args.target or extra.get("target") or "amber14"
    target = _target(spec, mol, solvent, args.temperature, args.platform)
    hmc = None
    if args.hmc_steps > 0:
        hmc = make_hmc(target, None, args.hmc_dt_fs, args.hmc_steps, args.seed)
    res = run_propagator_chain(
        sampler_model, target, mol.positions, args.steps, seed=args.seed, batch=args.batch,
        exploration=args.exploration, max_energy_rise_ev=args.max_rise_ev, hmc=hmc,
        mh_per_cycle=args.mh_per_cycle, progress=True,
    )  # fmt: skip
    top = mol.openmm_topology()
    # Frames are chain states (one per MH step or cycle); the DCD needs some positive spacing.
    spacing = tau_ps if tau_ps > 0 else 1.0
    dcd = write_dcd(_prefix(args.out, ".dcd"), top, positions_to_openmm(res.states), spacing)
    pdb = _prefix(args.out, ".pdb")
    with atomic_write(pdb) as fh:
        app.PDBFile.writeFile(top, positions_to_openmm(mol.positions) * unit.nanometer, fh)
    energies = -res.log_target / target.beta
    summary = {
        "structure": args.structure,
        "model": str(args.model),
        "target": spec,
        "mode": "exploration (unadjusted)" if args.exploration else "Metropolis-Hastings (exact)",
        "proposal": proposal_kind,
        "tau_ps": tau_ps,
        "steps": args.steps,
        "hmc_steps": args.hmc_steps,
        "acceptance_rate": res.acceptance_rate,
        "hmc_acceptance": res.hmc_acceptance,
        "wall_s": res.wall_s,
        "energy_ev_mean": float(np.mean(energies)),
        "energy_ev_std": float(np.std(energies)),
        "trajectory": str(dcd),
        "topology": str(pdb),
        "notes": notes,
    }
    if transfer:
        import torch

        tors = sampler_model.torsions
        ang = tors.angles(res.states)
        summary["torsions"] = [
            {
                "atoms": [int(a) for a in q],
                "circular_mean_deg": float(np.degrees(np.angle(np.exp(1j * a).mean()))),
                "resultant_length": float(np.abs(np.exp(1j * a).mean())),
            }
            for q, a in zip(tors.quads, ang.T)
        ]
        if res.moves is not None:
            summary["acceptance_per_block"] = {
                name: float(res.accepted[res.moves == b].mean())
                for b, name in enumerate(sampler_model.block_names())
                if (res.moves == b).any()
            }
    rows = [] if transfer else model.config.dihedral_rows
    if rows:
        import torch

        with torch.no_grad():
            ang = model.zmatrix.dihedrals(torch.as_tensor(res.states), rows).numpy()
        summary["torsions"] = [
            {
                "atoms": list(model.zmatrix.rows[r]),
                "circular_mean_deg": float(np.degrees(np.angle(np.exp(1j * a).mean()))),
                "resultant_length": float(np.abs(np.exp(1j * a).mean())),
            }
            for r, a in zip(rows, ang.T)
        ]
    try:
        ang = np.degrees(phi_psi(res.states, mol.topology)) if mol.topology is not None else None
    except (ValueError, KeyError):
        ang = None  # not a capped ALA residue
    if ang is not None:
        summary["phi_deg_mean"] = float(ang[:, 0].mean())
        summary["psi_deg_mean"] = float(ang[:, 1].mean())
    write_json(_prefix(args.out, ".json"), summary, indent=2)
    print(json.dumps(summary, indent=2))
    return 0
