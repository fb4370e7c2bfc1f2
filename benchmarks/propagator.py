"""Benchmark: learned propagators + exact MH (with HMC) vs plain MD (OBC2, 300 K).

Three parts; each is one run that measures sampler and MD side by side (CPU time of this process
and wall time), and merges its section into benchmarks/results/propagator.json:

  alanine   (top-level keys) a propagator trained for alanine dipeptide on its own MD: training
            MD (cached in runs/), training (resumable), timed MD and sampler from the same start,
            phi/psi JS divergence to the reference MD, ESS per second, a Ramachandran PNG;
  transfer  ("transfer") ONE transferable torsion proposal trained on MD of ACE-X-NME for
            X = ALA GLY LEU ILE THR ASN PHE MET, used without retraining on ACE-VAL-NME and
            ACE-SER-NME:
            ESS per CPU-second for phi, psi and chi vs HBonds 2 fs MD, with and without the
            training cost amortised, break-even, JS of phi/psi vs long MD with its noise floor,
            basins and rotamers reached, acceptance per torsion block (where the proposal fails);
  mlsim     ("alanine_mlsim") alanine dipeptide with an mlsim potential as the target, vs MD with
            the same potential.

Physics: the sampler's target is the Boltzmann density exp(-U/kT) with all bonds flexible (no
constraints), so Metropolis-Hastings works on plain Cartesian space; MD baselines use
LangevinMiddle (1 fs flexible, or HBonds at 2 fs: the usual production setting).

    .venv/bin/python benchmarks/propagator.py --part transfer   # ~30 CPU-min, MD cached in runs/
    .venv/bin/python benchmarks/propagator.py --part data       # only the cached MD
    .venv/bin/python benchmarks/propagator.py --quick           # smoke run, numbers not meaningful
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mlsim._fileio import atomic_path, write_json
from mlsim.analysis import effective_sample_size
from mlsim.units import length_factor

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _js_divergence(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """Jensen-Shannon divergence (natural log, max ln 2) of two (phi, psi) 2-D histograms."""
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    p = np.histogram2d(a[:, 0], a[:, 1], [edges, edges])[0].ravel()
    q = np.histogram2d(b[:, 0], b[:, 1], [edges, edges])[0].ravel()
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float((x[nz] * np.log(x[nz] / m[nz])).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def _ess(x: np.ndarray) -> float:
    """Effective sample size (mlsim.analysis: Sokal window, c = 5)."""
    return effective_sample_size(x)


def _angle_ess(theta: np.ndarray) -> float:
    """ESS of a periodic angle: the smaller of the ESS of its sine and cosine."""
    return effective_sample_size(theta, periodic=True)


def _ensure_md_data(out: Path, seeds: list[int], ns: float) -> tuple[list[np.ndarray], float]:
    """Training/reference MD (flexible bonds, 1 fs, OBC2) in Angstrom; cached per seed, written
    atomically (files from older runs store nm as `positions_nm`)."""
    from mlsim.testsystems import alanine_dipeptide, run_langevin

    out.mkdir(parents=True, exist_ok=True)
    mol = alanine_dipeptide("obc2", constraints=None)
    trajs, wall = [], 0.0
    for seed in seeds:
        f = out / f"seed{seed}.npz"
        if not f.exists():
            fr = run_langevin(
                mol.system, mol.positions, round(ns * 1e6), 500, seed, dt_fs=1.0,
                equilibrate_steps=20000, progress=True,
            )  # fmt: skip
            wall += fr.wall_s
            with atomic_path(f, suffix=".npz") as tmp:
                np.savez_compressed(tmp, positions=fr.positions.astype(np.float32))
        with np.load(f) as d:
            if "positions" in d:
                trajs.append(d["positions"].astype(np.float64))
            else:
                trajs.append(d["positions_nm"].astype(np.float64) * length_factor("nm"))
    return trajs, wall


def _alanine(args) -> dict:
    """Part `alanine`: a molecule-specific propagator on alanine dipeptide (top-level keys)."""
    if args.quick:
        args.train_steps, args.md_ps, args.cycles = 50, 20.0, 50
    from mlsim.propagators import (
        Molecule,
        OpenMMTarget,
        Propagator,
        make_hmc,
        make_pairs,
        run_propagator_chain,
        train_propagator,
    )
    from mlsim.testsystems import alanine_dipeptide, phi_psi, run_langevin

    work = Path(args.workdir)
    mol = alanine_dipeptide("obc2", constraints=None)
    top = mol.topology
    frame_ps = 0.5
    trajs, data_wall = _ensure_md_data(work / "md_obc2_flex", [0, 1, 2, 3], 1.0)
    ref = np.concatenate([phi_psi(t, top) for t in trajs])
    lag = round(args.tau_ps / frame_ps)

    # --- train (resumable; a finished model is reused) -----------------------------------------
    model_path = work / f"model_dihedral_tau{args.tau_ps:g}.pt"
    # The Z-matrix and its rotatable torsions (phi, psi, three methyl rotors) come from the bond
    # graph; nothing here is specific to alanine dipeptide but the reference data.
    molecule = Molecule.from_topology(top, mol.positions, "alanine")
    if model_path.exists() and not args.quick:
        model = Propagator.load(model_path)
        train_info = model.extra
    else:
        x0, x1 = make_pairs(trajs, lag)
        model = Propagator.for_molecule(
            molecule, tau_ps=args.tau_ps, mode="dihedrals", hidden=64, n_layers=6, d_context=64
        )
        res = train_propagator(
            model, x0, x1, n_steps=args.train_steps, batch_size=256, lr=2e-3,
            checkpoint=work / f"train_tau{args.tau_ps:g}.ckpt",
        )  # fmt: skip
        train_info = {
            "train_s": res.wall_s, "steps": res.steps, "train_nll": res.train_nll,
            "val_nll": res.val_nll, "n_pairs": len(x0),
        }  # fmt: skip
        if not args.quick:
            model.save(model_path, extra=train_info)

    # --- timed MD from the same start as the chain --------------------------------------------
    x_start = trajs[0][0]
    n_md = round(args.md_ps * 1000)
    cpu0 = time.process_time()
    md = run_langevin(
        mol.system, x_start, n_md, round(frame_ps * 1000), args.seed, dt_fs=1.0, progress=True
    )
    md_cpu = time.process_time() - cpu0
    md_angles = phi_psi(md.positions, top)

    # A second, faster baseline: HBonds-constrained MD at 2 fs (a slightly different ensemble, the
    # usual production setting); reported for ESS per CPU-second only.
    mol_c = alanine_dipeptide("obc2", constraints="HBonds")
    cpu0 = time.process_time()
    md2 = run_langevin(
        mol_c.system, x_start, n_md // 2, round(frame_ps * 500), args.seed, dt_fs=2.0,
        progress=True,
    )  # fmt: skip
    md2_cpu = time.process_time() - cpu0
    md2_angles = phi_psi(md2.positions, top)

    # --- sampler chain -------------------------------------------------------------------------
    target = OpenMMTarget(mol.system, 300.0)
    hmc = make_hmc(target, dt_fs=1.0, n_steps=args.hmc_steps, seed=args.seed)
    cpu0 = time.process_time()
    chain = run_propagator_chain(
        model, target, x_start, args.cycles, seed=args.seed, hmc=hmc,
        mh_per_cycle=args.mh_per_cycle, progress=True,
    )  # fmt: skip
    ch_cpu = time.process_time() - cpu0
    ch_angles = phi_psi(chain.states[1:], top)

    # --- metrics -------------------------------------------------------------------------------
    half = len(ref) // 2
    out: dict = {
        "system": "alanine dipeptide ACE-ALA-NME, amber14 + OBC2, 300 K, flexible bonds",
        "reference": f"{len(trajs)} x 1 ns Langevin MD (1 fs, frames every {frame_ps} ps)",
        "reference_frames": int(len(ref)),
        "js_bins": args.bins,
        "js_note": "natural log (max ln2 = 0.693); JS between the two halves of the reference "
        "is the noise floor",
        "js_reference_halves": _js_divergence(ref[:half], ref[half:], args.bins),
        "training": train_info,
        "training_data_md_wall_s_this_run": data_wall,
        "tau_ps": args.tau_ps,
        "proposal": "conditional RealNVP on (phi, psi, 3 methyl rotors) given x; + HMC "
        f"({args.hmc_steps} x 1 fs velocity Verlet) per cycle; {args.mh_per_cycle} MH "
        "proposals per cycle",
    }
    md_ess = [_angle_ess(md_angles[:, i]) for i in range(2)]
    ch_ess = [_angle_ess(ch_angles[:, i]) for i in range(2)]
    out["md"] = {
        "simulated_ps": args.md_ps,
        "wall_s": md.wall_s,
        "frames": int(len(md_angles)),
        "js_vs_reference": _js_divergence(md_angles, ref, args.bins),
        "ess_phi": md_ess[0],
        "ess_psi": md_ess[1],
        "ess_per_s_phi": md_ess[0] / md.wall_s,
        "ess_per_s_psi": md_ess[1] / md.wall_s,
        "cpu_s": md_cpu,
        "ess_per_cpu_s_phi": md_ess[0] / md_cpu,
        "ess_per_cpu_s_psi": md_ess[1] / md_cpu,
    }
    out["sampler"] = {
        "cycles": args.cycles,
        "wall_s": chain.wall_s,
        "flow_mh_acceptance": chain.acceptance_rate,
        "hmc_acceptance": chain.hmc_acceptance,
        "js_vs_reference": _js_divergence(ch_angles, ref, args.bins),
        "ess_phi": ch_ess[0],
        "ess_psi": ch_ess[1],
        "ess_per_s_phi": ch_ess[0] / chain.wall_s,
        "ess_per_s_psi": ch_ess[1] / chain.wall_s,
        "cpu_s": ch_cpu,
        "ess_per_cpu_s_phi": ch_ess[0] / ch_cpu,
        "ess_per_cpu_s_psi": ch_ess[1] / ch_cpu,
    }
    # What the 4 ns of training MD costs at this run's MD speed (it is reused between runs).
    out["training_data_md_cpu_s_estimate"] = md_cpu / args.md_ps * 1000.0 * len(trajs)
    md2_ess = [_angle_ess(md2_angles[:, i]) for i in range(2)]
    out["md_hbonds_2fs"] = {
        "simulated_ps": args.md_ps,
        "wall_s": md2.wall_s,
        "cpu_s": md2_cpu,
        "js_vs_reference": _js_divergence(md2_angles, ref, args.bins),
        "ess_phi": md2_ess[0],
        "ess_psi": md2_ess[1],
        "ess_per_cpu_s_phi": md2_ess[0] / md2_cpu,
        "ess_per_cpu_s_psi": md2_ess[1] / md2_cpu,
    }
    ratios = [
        out["sampler"][f"ess_per_s_{a}"] / max(out["md"][f"ess_per_s_{a}"], 1e-12)
        for a in ("phi", "psi")
    ]
    out["ess_per_s_ratio_phi"], out["ess_per_s_ratio_psi"] = ratios
    out["ess_per_s_ratio_min"] = min(ratios)
    # The machine is shared: CPU time of this process is the load-independent cost measure.
    cpu_ratios = [
        out["sampler"][f"ess_per_cpu_s_{a}"] / max(out["md"][f"ess_per_cpu_s_{a}"], 1e-12)
        for a in ("phi", "psi")
    ]
    out["ess_per_cpu_s_ratio_phi"], out["ess_per_cpu_s_ratio_psi"] = cpu_ratios
    out["target_met_cpu_time"] = bool(
        min(cpu_ratios) >= 5 and out["sampler"]["js_vs_reference"] <= 0.05
    )
    out["ess_per_cpu_s_ratio_vs_hbonds_md"] = [
        out["sampler"][f"ess_per_cpu_s_{a}"]
        / max(out["md_hbonds_2fs"][f"ess_per_cpu_s_{a}"], 1e-12)
        for a in ("phi", "psi")
    ]
    out["target_met"] = bool(min(ratios) >= 5 and out["sampler"]["js_vs_reference"] <= 0.05)

    # --- plot ----------------------------------------------------------------------------------
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    for ax, ang, title in zip(
        axes,
        [ref, md_angles, ch_angles],
        [
            f"reference MD ({len(trajs)} ns)",
            f"MD {args.md_ps:g} ps ({md.wall_s:.0f} s)",
            f"propagator+MH ({chain.wall_s:.0f} s, acc {chain.acceptance_rate:.2f})",
        ],
    ):
        ax.hist2d(np.degrees(ang[:, 0]), np.degrees(ang[:, 1]), bins=72,
                  range=[[-180, 180], [-180, 180]], cmap="viridis", cmin=1)  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("phi (deg)")
    axes[0].set_ylabel("psi (deg)")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / ("propagator_quick.png" if args.quick else "propagator_ramachandran.png")
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    out["plot"] = str(png.relative_to(ROOT))

    print(f"{'':24s}{'MD':>12s}{'sampler':>12s}")
    for key in (
        "wall_s",
        "js_vs_reference",
        "ess_phi",
        "ess_psi",
        "ess_per_s_phi",
        "ess_per_s_psi",
    ):
        print(f"{key:24s}{out['md'][key]:12.4g}{out['sampler'][key]:12.4g}")
    print(
        f"flow MH acceptance {chain.acceptance_rate:.3f}, HMC acceptance {chain.hmc_acceptance:.3f}"
    )
    print(f"ESS/CPU-s ratio phi {cpu_ratios[0]:.2f}, psi {cpu_ratios[1]:.2f}")
    r2 = out["ess_per_cpu_s_ratio_vs_hbonds_md"]
    print(f"ESS/CPU-s ratio vs HBonds 2 fs MD: phi {r2[0]:.2f}, psi {r2[1]:.2f}")
    print(f"ESS/s ratio phi {ratios[0]:.2f}, psi {ratios[1]:.2f}; JS floor "
          f"{out['js_reference_halves']:.4f}; training {train_info.get('train_s', 0):.0f} s")  # fmt: skip
    return out


# --- part "transfer" ------------------------------------------------------------------------------
TRAIN_RESIDUES = ("ALA", "GLY", "LEU", "ILE", "THR", "ASN", "PHE", "MET")
HELD_OUT = ("VAL", "SER")
# Reference runs per held-out molecule: ACE-VAL-NME crosses between its basins about once per
# ns (one 1 ns run never reaches alphaR), so it gets twice the reference of ACE-SER-NME.
REF_RUNS = {"VAL": 2, "SER": 1}  # x --ref-runs
FRAME_PS = 0.5


def _md_cached(
    path: Path,
    residue: str,
    constraints: str | None,
    dt_fs: float,
    ps: float,
    seed: int,
    alpha_start: bool = False,
    solvent: str = "obc2",
) -> dict:
    """Langevin MD of ACE-X-NME (300 K, frames every FRAME_PS) cached in `path` (npz with the
    CPU and wall seconds it took); positions in Angstrom. alpha_start: start from alphaR
    (phi, psi = -65, -40) with chi1 turned by 120 degrees instead of the built structure."""
    from mlsim.testsystems import (
        capped_dipeptide,
        dihedral,
        dipeptide_torsions,
        run_langevin,
        set_torsions,
    )

    settings = f"{residue} {constraints} {dt_fs} fs {ps} ps seed {seed} frame {FRAME_PS} ps"
    settings += " start alphaR chi1+120" if alpha_start else ""
    settings += f" {solvent}" if solvent != "obc2" else ""
    if path.exists():
        with np.load(path) as d:
            if str(d["settings"]) == settings:
                return {"positions": d["positions"].astype(np.float64), "cpu_s": float(d["cpu_s"]),
                        "wall_s": float(d["wall_s"]), "cached": True}  # fmt: skip
    mol = capped_dipeptide(residue, solvent, constraints)
    every = round(FRAME_PS * 1000 / dt_fs)
    cpu0 = time.process_time()
    x0 = mol.positions
    if alpha_start:
        tors = dipeptide_torsions(mol.topology)
        values = {"phi": -65.0, "psi": -40.0}
        if "chi1" in tors:
            values["chi1"] = float(np.degrees(dihedral(x0, tors["chi1"]))) + 120.0
        x0 = set_torsions(mol.topology, x0, values, mol.system)
    fr = run_langevin(
        mol.system, x0, round(ps * 1000 / dt_fs), every, seed, dt_fs=dt_fs,
        equilibrate_steps=round(min(20.0, ps) * 1000 / dt_fs), progress=True,
    )  # fmt: skip
    cpu = time.process_time() - cpu0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, positions=fr.positions.astype(np.float32), cpu_s=cpu,
                            wall_s=fr.wall_s, settings=settings)  # fmt: skip
    return {"positions": fr.positions, "cpu_s": cpu, "wall_s": fr.wall_s, "cached": False}


def _training_data(args, solvent: str = "obc2") -> list[tuple[str, list[dict]]]:
    """Training MD of every training dipeptide: HBonds, 2 fs (cheap; MH corrects any mismatch).
    Odd seeds start in alphaR with chi1 turned: a few hundred ps of MD of a beta-branched
    residue may never cross between basins, and a proposal learns only the basins it saw."""
    work = Path(args.workdir) / "transfer"
    folder = "train_md" if solvent == "obc2" else f"train_md_{solvent}"
    out = []
    for res in TRAIN_RESIDUES:
        runs = [
            _md_cached(
                work / folder / f"{res.lower()}_seed{s}.npz",
                res,
                "HBonds",
                2.0,
                args.train_md_ps,
                s,
                alpha_start=bool(s % 2),
                solvent=solvent,
            )  # fmt: skip
            for s in range(args.train_md_runs)
        ]
        out.append((res, runs))
    return out


def _reference(args, residue: str) -> list[dict]:
    """Long reference MD of a held-out dipeptide: flexible bonds, 1 fs (the sampler's target)."""
    work = Path(args.workdir) / "transfer" / "reference"
    return [
        _md_cached(
            work / f"{residue.lower()}_seed{s}.npz", residue, None, 1.0, args.ref_ps, 100 + s
        )
        for s in range(args.ref_runs * REF_RUNS[residue])
    ]


def _basins(phi_psi_deg: np.ndarray) -> dict:
    """Fractions of frames in the Ramachandran basins and the number of entries into each."""
    phi, psi = phi_psi_deg[:, 0], phi_psi_deg[:, 1]
    label = np.where(
        phi < 0,
        np.where((psi > -120) & (psi < 50), 0, 1),  # alphaR ; beta/PPII/C7eq
        np.where(psi > 0, 2, 3),  # alphaL ; C7ax
    )
    names = ["alphaR", "beta_PPII_C7eq", "alphaL", "C7ax"]
    entries = np.bincount(label[1:][label[1:] != label[:-1]], minlength=4)
    return {
        n: {"fraction": float(np.mean(label == k)), "entries": int(entries[k])}
        for k, n in enumerate(names)
    }


def _rotamers(chi_deg: np.ndarray) -> dict:
    """Fractions of chi in the g+ (0, 120), t (|chi| > 120) and g- (-120, 0) wells."""
    return {
        "g+": float(np.mean((chi_deg > 0) & (chi_deg <= 120))),
        "t": float(np.mean(np.abs(chi_deg) > 120)),
        "g-": float(np.mean((chi_deg <= 0) & (chi_deg >= -120))),
    }


def _slow_states(name: str, deg: np.ndarray) -> dict[str, np.ndarray]:
    """Indicator series of the slow states of a torsion (degrees): phi > 0 (alphaL/C7ax) for
    phi, alphaR-like -120 < psi < 50 for psi, the three rotamer wells for chi."""
    if name == "phi":
        return {"phi>0": deg > 0}
    if name == "psi":
        return {"-120<psi<50": (deg > -120) & (deg < 50)}
    return {
        "g+": (deg > 0) & (deg <= 120),
        "t": np.abs(deg) > 120,
        "g-": (deg <= 0) & (deg >= -120),
    }


def _basin_ess(name: str, deg: np.ndarray, ref_deg: np.ndarray) -> float | None:
    """ESS of the slow-state populations: the smallest ESS over the indicators of the states
    that hold at least 2 % of the reference (None when no state does). A run that never leaves
    one state has ESS 0: it says nothing about the populations."""
    ref = _slow_states(name, ref_deg)
    run = _slow_states(name, deg)
    live = [k for k in ref if 0.02 <= ref[k].mean() <= 0.98]
    if not live:
        return None
    return min(_ess(run[k].astype(np.float64)) for k in live)


def _finite(v: float) -> float | None:
    """JSON-safe: None for inf/NaN (never reached, undefined)."""
    return float(v) if np.isfinite(v) else None


def _torsion_js(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """Jensen-Shannon divergence (natural log) of two 1-D angle histograms."""
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    p, q = np.histogram(a, edges)[0], np.histogram(b, edges)[0]
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    kl = lambda x: float((x[x > 0] * np.log(x[x > 0] / m[x > 0])).sum())  # noqa: E731
    return 0.5 * kl(p) + 0.5 * kl(q)


def _train_transfer_model(args, data, solvent: str = "obc2") -> tuple[object, dict]:
    """Train (or reuse) the transfer proposal on the training dipeptides' MD."""
    from mlsim.propagators import Molecule, TransferPropagator, train_transfer
    from mlsim.testsystems import capped_dipeptide

    tag = "" if solvent == "obc2" else f"_{solvent}"
    path = Path(args.workdir) / "transfer" / f"transfer{tag}_tau{args.transfer_tau_ps:g}.pt"
    if path.exists() and not args.quick:
        model = TransferPropagator.load(path)
        return model, dict(model.extra)
    sets = []
    for res, runs in data:
        mol = capped_dipeptide(res, "obc2", None)
        molecule = Molecule.from_topology(mol.topology, mol.positions, f"ACE-{res}-NME")
        sets.append((molecule, [r["positions"] for r in runs], FRAME_PS))
    model = TransferPropagator(tau_ps=args.transfer_tau_ps, hidden=args.transfer_hidden)
    res = train_transfer(model, sets, n_steps=args.transfer_steps, batch_size=512, lr=2e-3)
    info = {
        "train_cpu_s": res.cpu_s, "train_wall_s": res.wall_s, "steps": res.steps,
        "train_nll_per_torsion": res.train_nll, "val_nll_per_torsion": res.val_nll,
        "uniform_nll_per_torsion": float(np.log(2 * np.pi)), "n_examples": res.n_examples,
    }  # fmt: skip
    if not args.quick:
        model.save(path, extra=info)
    return model, info


def _transfer(args) -> dict:
    """Part `transfer`: one proposal trained on some dipeptides, sampling held-out ones."""
    from mlsim.propagators import Molecule, OpenMMTarget, make_hmc, run_propagator_chain
    from mlsim.testsystems import capped_dipeptide, dihedral, dipeptide_torsions, run_langevin

    if args.quick:
        args.train_md_ps, args.train_md_runs, args.ref_ps, args.ref_runs = 5.0, 1, 5.0, 2
        args.transfer_steps, args.transfer_md_ps, args.transfer_cycles = 50, 5.0, 30
        args.workdir = str(Path(args.workdir) / "quick")
    data = _training_data(args)
    train_md_cpu = sum(r["cpu_s"] for _, runs in data for r in runs)
    model, info = _train_transfer_model(args, data)
    train_cpu = train_md_cpu + info["train_cpu_s"]
    out: dict = {
        "system": "capped dipeptides ACE-X-NME, amber14 + OBC2, 300 K; sampler target: flexible "
        "bonds",
        "training_molecules": [f"ACE-{r}-NME" for r in TRAIN_RESIDUES],
        "held_out_molecules": [f"ACE-{r}-NME" for r in HELD_OUT],
        "training_md": f"{args.train_md_runs} x {args.train_md_ps:g} ps per molecule, HBonds "
        f"2 fs Langevin, frames every {FRAME_PS} ps; even seeds start from the built structure "
        "(C7eq/beta), odd seeds from alphaR with chi1 turned by 120 degrees",
        "training_md_cpu_s": train_md_cpu,
        "training": info,
        "training_total_cpu_s": train_cpu,
        "tau_ps": args.transfer_tau_ps,
        "proposal": "transferable torsion proposal (histogram densities of the canonical "
        "rotatable torsions, conditioned on torsion chemistry and neighbouring torsions), "
        f"blocks of 1-2 torsions; {args.transfer_mh_per_cycle} MH proposals + one HMC move "
        f"({args.transfer_hmc_steps} x {args.transfer_hmc_dt_fs:g} fs velocity Verlet) per cycle",
        "js_bins": args.bins,
        "js_note": "natural log (max ln2 = 0.693); js_reference_halves (the two halves of the "
        "reference against each other) is the noise floor",
        "ess_note": "ESS of a torsion = min(ESS of sin, ESS of cos); per CPU-second of this "
        "process; 'amortised' adds the training cost (training MD + fitting) split evenly over "
        "the held-out molecules of this run. slow_state_ess: ESS of the populations of the slow "
        "states (phi > 0; -120 < psi < 50; chi rotamers g+/t/g-), the smallest over the states "
        "holding >= 2 % of the reference; sin/cos ESS of a run that never leaves a basin "
        "counts its fast in-basin wiggles, the state ESS counts 0. break_even_*: the ESS (and "
        "the MD CPU-seconds it takes) beyond which the sampler, training included, is cheaper "
        "(ratio5_*: 5x cheaper); null: never",
        "molecules": {},
    }
    n_held = len(HELD_OUT)
    for res in HELD_OUT:
        mol = capped_dipeptide(res, "obc2", None)
        top = mol.topology
        tors = dipeptide_torsions(top)
        ref_runs = _reference(args, res)
        ref = np.concatenate([r["positions"] for r in ref_runs])
        ref_ang = {k: dihedral(ref, q) for k, q in tors.items()}
        ref_pp = np.stack([ref_ang["phi"], ref_ang["psi"]], -1)
        half = len(ref_pp) // 2
        x_start = mol.positions

        # timed baseline: HBonds 2 fs MD
        mol_c = capped_dipeptide(res, "obc2", "HBonds")
        cpu0 = time.process_time()
        md = run_langevin(
            mol_c.system, x_start, round(args.transfer_md_ps * 500), round(FRAME_PS * 500),
            args.seed, dt_fs=2.0, equilibrate_steps=10_000, progress=True,
        )  # fmt: skip
        md_cpu = time.process_time() - cpu0
        md_ang = {k: dihedral(md.positions, q) for k, q in tors.items()}

        # timed sampler: the transfer proposal bound to a molecule it never saw
        molecule = Molecule.from_topology(top, mol.positions, f"ACE-{res}-NME")
        target = OpenMMTarget(mol.system, 300.0)
        cpu0 = time.process_time()
        proposal = model.bind(molecule)
        hmc = make_hmc(
            target, dt_fs=args.transfer_hmc_dt_fs, n_steps=args.transfer_hmc_steps, seed=args.seed
        )
        chain = run_propagator_chain(
            proposal, target, x_start, args.transfer_cycles, seed=args.seed, hmc=hmc,
            mh_per_cycle=args.transfer_mh_per_cycle, progress=True,
        )  # fmt: skip
        ch_cpu = time.process_time() - cpu0
        states = chain.states[1:]
        ch_ang = {k: dihedral(states, q) for k, q in tors.items()}

        amort = train_cpu / n_held
        row: dict = {
            "atoms": int(mol.n_atoms),
            "reference": f"{len(ref_runs)} x {args.ref_ps:g} ps Langevin MD, flexible bonds, 1 fs",
            "reference_cpu_s": sum(r["cpu_s"] for r in ref_runs),
            "reference_frames": int(len(ref_pp)),
            "js_reference_halves": _js_divergence(ref_pp[:half], ref_pp[half:], args.bins),
            "md_hbonds_2fs": {"simulated_ps": args.transfer_md_ps, "cpu_s": md_cpu,
                              "wall_s": md.wall_s, "frames": int(len(md.positions))},
            "sampler": {"cycles": args.transfer_cycles, "cpu_s": ch_cpu, "wall_s": chain.wall_s,
                        "mh_acceptance": chain.acceptance_rate,
                        "hmc_acceptance": chain.hmc_acceptance},
            "torsions": {},
        }  # fmt: skip
        md_pp = np.stack([md_ang["phi"], md_ang["psi"]], -1)
        ch_pp = np.stack([ch_ang["phi"], ch_ang["psi"]], -1)
        row["md_hbonds_2fs"]["js_vs_reference"] = _js_divergence(md_pp, ref_pp, args.bins)
        row["sampler"]["js_vs_reference"] = _js_divergence(ch_pp, ref_pp, args.bins)
        for k in tors:
            e_md, e_ch = _angle_ess(md_ang[k]), _angle_ess(ch_ang[k])
            r_md, r_ch = e_md / md_cpu, e_ch / ch_cpu
            r_am = e_ch / (ch_cpu + amort)
            # Break-even: the ESS N at which N / r_ch + training = N / r_md (and the same for 5x).
            be = amort / (1 / r_md - 1 / r_ch) if r_ch > r_md else float("inf")
            be5 = amort / (1 / (5 * r_md) - 1 / r_ch) if r_ch > 5 * r_md else float("inf")
            deg_md, deg_ch, deg_ref = (np.degrees(a[k]) for a in (md_ang, ch_ang, ref_ang))
            b_md, b_ch = _basin_ess(k, deg_md, deg_ref), _basin_ess(k, deg_ch, deg_ref)
            basin = None
            if b_md is not None and b_ch is not None:
                basin = {
                    "ess_md": b_md, "ess_sampler": b_ch,
                    "ess_per_cpu_s_md": b_md / md_cpu, "ess_per_cpu_s_sampler": b_ch / ch_cpu,
                    "ratio": _finite((b_ch / ch_cpu) / (b_md / md_cpu) if b_md > 0 else np.inf),
                    "ratio_amortised": _finite(
                        (b_ch / (ch_cpu + amort)) / (b_md / md_cpu) if b_md > 0 else np.inf
                    ),
                }  # fmt: skip
            row["torsions"][k] = {
                "atoms": list(tors[k]),
                "ess_md": e_md, "ess_sampler": e_ch,
                "ess_per_cpu_s_md": r_md, "ess_per_cpu_s_sampler": r_ch,
                "ratio": r_ch / max(r_md, 1e-12),
                "ess_per_cpu_s_sampler_amortised": r_am,
                "ratio_amortised": r_am / max(r_md, 1e-12),
                "break_even_ess": _finite(be), "break_even_md_cpu_s": _finite(be / r_md),
                "ratio5_with_training_ess": _finite(be5),
                "ratio5_with_training_md_cpu_s": _finite(be5 / r_md),
                "slow_state_ess": basin,
                "js_1d_sampler_vs_reference": _torsion_js(ch_ang[k], ref_ang[k], args.bins),
                "js_1d_md_vs_reference": _torsion_js(md_ang[k], ref_ang[k], args.bins),
                "js_1d_reference_halves": _torsion_js(
                    ref_ang[k][: len(ref_ang[k]) // 2], ref_ang[k][len(ref_ang[k]) // 2 :],
                    args.bins,
                ),
            }  # fmt: skip
            if k.startswith("chi"):
                row["torsions"][k]["rotamers"] = {
                    "reference": _rotamers(np.degrees(ref_ang[k])),
                    "md_hbonds_2fs": _rotamers(np.degrees(md_ang[k])),
                    "sampler": _rotamers(np.degrees(ch_ang[k])),
                }
        row["basins"] = {
            "reference": _basins(np.degrees(ref_pp)),
            "md_hbonds_2fs": _basins(np.degrees(md_pp)),
            "sampler": _basins(np.degrees(ch_pp)),
        }
        # Where the proposal fails: acceptance per block of torsions.
        names = proposal.block_names()
        atom_name = {a.index: f"{a.residue.name}:{a.name}" for a in top.atoms()}
        per_block = {}
        for b, blk in enumerate(proposal.torsions.blocks):
            sel = chain.moves == b
            label = " + ".join(
                "-".join(atom_name[int(a)] for a in proposal.torsions.quads[t]) for t in blk
            )
            per_block[label] = {
                "proposed": int(sel.sum()),
                "acceptance": float(chain.accepted[sel].mean()) if sel.any() else None,
            }
        assert len(names) == len(per_block)
        row["acceptance_per_block"] = per_block
        slow = [k for k in tors if k in ("phi", "psi") or k == "chi1"]
        row["min_ratio_slow_torsions"] = min(row["torsions"][k]["ratio"] for k in slow)
        row["min_ratio_slow_torsions_amortised"] = min(
            row["torsions"][k]["ratio_amortised"] for k in slow
        )
        row["target_met"] = bool(
            row["min_ratio_slow_torsions"] >= 5 and row["sampler"]["js_vs_reference"] <= 0.05
        )
        row["target_met_amortised"] = bool(
            row["min_ratio_slow_torsions_amortised"] >= 5
            and row["sampler"]["js_vs_reference"] <= 0.05
        )
        out["molecules"][f"ACE-{res}-NME"] = row
        _print_transfer_row(res, row)
    return out


def _print_transfer_row(res: str, row: dict) -> None:
    """One table per held-out molecule."""
    smp, md = row["sampler"], row["md_hbonds_2fs"]
    print(
        f"\nACE-{res}-NME (held out): MH acceptance {smp['mh_acceptance']:.3f}, HMC "
        f"{smp['hmc_acceptance']:.3f}; CPU s: MD {md['cpu_s']:.1f}, sampler {smp['cpu_s']:.1f}"
    )
    print(
        f"{'torsion':8s}{'ESS MD':>9s}{'ESS smp':>9s}{'/CPU-s MD':>11s}{'/CPU-s smp':>12s}"
        f"{'ratio':>8s}{'amort.':>8s}{'state ratio':>12s}{'JS1d':>8s}"
    )
    for k, t in row["torsions"].items():
        st = t["slow_state_ess"]
        sr = "-" if st is None else ("inf" if st["ratio"] is None else f"{st['ratio']:.2f}")
        print(
            f"{k:8s}{t['ess_md']:9.1f}{t['ess_sampler']:9.1f}{t['ess_per_cpu_s_md']:11.3g}"
            f"{t['ess_per_cpu_s_sampler']:12.3g}{t['ratio']:8.2f}{t['ratio_amortised']:8.2f}"
            f"{sr:>12s}{t['js_1d_sampler_vs_reference']:8.4f}"
        )
    print(
        f"JS(phi,psi) sampler {smp['js_vs_reference']:.4f}, MD {md['js_vs_reference']:.4f}, "
        f"noise floor (reference halves) {row['js_reference_halves']:.4f}"
    )
    for b, v in row["acceptance_per_block"].items():
        acc = "-" if v["acceptance"] is None else f"{v['acceptance']:.3f}"
        print(f"  block {b}: {v['proposed']} proposed, acceptance {acc}")


# --- part "mlsim" -------------------------------------------------------------------------------
def _mlsim_arguments(g) -> None:
    """Options of the mlsim part."""
    g.add_argument(
        "--mlsim-model",
        default=str(ROOT / "runs" / "alanine_xtb" / "model" / "model.pt"),
        help="mlsim model of alanine dipeptide (examples/alanine/make_xtb_model.py makes one)",
    )
    g.add_argument("--mlsim-md-ps", type=float, default=300.0, help="timed MD, 1 fs")
    g.add_argument("--mlsim-cycles", type=int, default=3000)
    g.add_argument("--mlsim-mh-per-cycle", type=int, default=8)
    g.add_argument("--mlsim-hmc-steps", type=int, default=10)
    g.add_argument("--mlsim-hmc-dt-fs", type=float, default=1.0)


def _ase_md_angles(
    model, numbers, x0, ps: float, seed: int, top
) -> tuple[np.ndarray, float, float]:
    """Langevin MD (1 fs, friction 1/ps, 300 K) with ASE and the mlsim model: (phi, psi every
    0.5 ps, CPU s, wall s), after 10 ps of equilibration (not timed)."""
    from ase import Atoms, units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from mlsim.ase import MLCalculator
    from mlsim.testsystems import phi_psi

    atoms = Atoms(numbers=numbers, positions=x0)
    atoms.calc = MLCalculator(model)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=rng)
    dyn = Langevin(
        atoms, 1.0 * units.fs, temperature_K=300.0, friction=0.001 / units.fs, rng=rng,
        fixcm=False,  # fixcm=True biases the ensemble of a small molecule (ASE's warning)
    )  # fmt: skip
    dyn.run(10_000)
    n = round(ps * 2)
    xs = np.empty((n, len(numbers), 3))
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        dyn.run(500)
        xs[i] = atoms.positions
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    if not np.all(np.isfinite(xs)):
        raise RuntimeError("MD with the mlsim model blew up")
    return phi_psi(xs, top), cpu, wall


def _mlsim(args) -> dict:
    """Part `mlsim`: alanine dipeptide with an mlsim potential as the target, the transfer
    proposal (trained on Amber14 MD) unchanged, vs MD with the same potential."""
    from mlsim.models import load_model, optimize_for_inference
    from mlsim.propagators import ModelTarget, Molecule, make_hmc, run_propagator_chain
    from mlsim.testsystems import alanine_dipeptide, phi_psi

    if args.quick:
        args.mlsim_md_ps, args.mlsim_cycles = 5.0, 30
    path = Path(args.mlsim_model)
    if not path.exists():
        raise SystemExit(f"{path} missing: run examples/alanine/make_xtb_model.py first")
    model = optimize_for_inference(load_model(path))  # the same fast copy for MD and sampler
    # The proposal: the transfer model trained on cheap classical MD of the same dipeptides in
    # the target's environment (vacuum), not on the expensive mlsim potential.
    data = _training_data(args, "vacuum")
    proposal_model, info = _train_transfer_model(args, data, "vacuum")
    ala = alanine_dipeptide("vacuum", constraints=None)
    top = ala.topology
    molecule = Molecule.from_topology(top, ala.positions, "alanine dipeptide")
    target = ModelTarget(model, ala.numbers, 300.0)

    md_pp, md_cpu, md_wall = _ase_md_angles(model, ala.numbers, ala.positions, args.mlsim_md_ps,
                                            args.seed, top)  # fmt: skip
    cpu0 = time.process_time()
    proposal = proposal_model.bind(molecule)
    hmc = make_hmc(target, dt_fs=args.mlsim_hmc_dt_fs, n_steps=args.mlsim_hmc_steps, seed=args.seed)
    chain = run_propagator_chain(
        proposal, target, ala.positions, args.mlsim_cycles, seed=args.seed, hmc=hmc,
        mh_per_cycle=args.mlsim_mh_per_cycle, progress=True,
    )  # fmt: skip
    ch_cpu = time.process_time() - cpu0
    ch_pp = phi_psi(chain.states[1:], top)
    half = len(md_pp) // 2
    out: dict = {
        "system": "alanine dipeptide ACE-ALA-NME in vacuum, 300 K; target: an mlsim PaiNN "
        "(32 features, 2 interactions) trained on GFN2-xTB labels of Amber14 MD frames at 300 "
        "and 600 K (examples/alanine/make_xtb_model.py), run through optimize_for_inference",
        "model": str(path),
        "proposal": "a transfer proposal as in the 'transfer' part, trained on Amber14 MD of the "
        "same eight dipeptides in vacuum (the target's environment), not on the mlsim potential; "
        "+ TargetHMC "
        f"({args.mlsim_hmc_steps} x {args.mlsim_hmc_dt_fs:g} fs) per cycle, "
        f"{args.mlsim_mh_per_cycle} MH proposals per cycle (one batched energy call)",
        "proposal_training_cpu_s": sum(r["cpu_s"] for _, runs in data for r in runs)
        + info["train_cpu_s"],
        "proposal_training_note": "classical (Amber14, vacuum) MD of the eight training dipeptides "
        "plus fitting; paid once, not counted in the ratios below",
        "md": {"integrator": "ASE Langevin, 1 fs, friction 1/ps, flexible bonds",
               "simulated_ps": args.mlsim_md_ps, "cpu_s": md_cpu, "wall_s": md_wall,
               "frames": int(len(md_pp))},
        "sampler": {"cycles": args.mlsim_cycles, "cpu_s": ch_cpu, "wall_s": chain.wall_s,
                    "mh_acceptance": chain.acceptance_rate,
                    "hmc_acceptance": chain.hmc_acceptance},
        "js_bins": args.bins,
        "js_sampler_vs_md": _js_divergence(ch_pp, md_pp, args.bins),
        "js_md_halves": _js_divergence(md_pp[:half], md_pp[half:], args.bins),
        "basins": {"md": _basins(np.degrees(md_pp)), "sampler": _basins(np.degrees(ch_pp))},
        "torsions": {},
    }  # fmt: skip
    for i, k in enumerate(("phi", "psi")):
        e_md, e_ch = _angle_ess(md_pp[:, i]), _angle_ess(ch_pp[:, i])
        out["torsions"][k] = {
            "ess_md": e_md, "ess_sampler": e_ch, "ess_per_cpu_s_md": e_md / md_cpu,
            "ess_per_cpu_s_sampler": e_ch / ch_cpu,
            "ratio": (e_ch / ch_cpu) / max(e_md / md_cpu, 1e-12),
        }  # fmt: skip
    out["min_ratio"] = min(t["ratio"] for t in out["torsions"].values())
    out["target_met"] = bool(out["min_ratio"] >= 5)
    print(f"\nalanine dipeptide, mlsim target: CPU s MD {md_cpu:.1f} ({args.mlsim_md_ps:g} ps), "
          f"sampler {ch_cpu:.1f}; MH acceptance {chain.acceptance_rate:.3f}, HMC "
          f"{chain.hmc_acceptance:.3f}")  # fmt: skip
    for k, t in out["torsions"].items():
        print(f"{k}: ESS MD {t['ess_md']:.1f}, sampler {t['ess_sampler']:.1f}; ESS/CPU-s ratio "
              f"{t['ratio']:.2f}")  # fmt: skip
    print(f"JS(phi,psi) sampler vs MD {out['js_sampler_vs_md']:.4f} (MD halves "
          f"{out['js_md_halves']:.4f})")  # fmt: skip
    return out


# --- driver -------------------------------------------------------------------------------------
def _data_only(args) -> None:
    """Part `data`: produce the cached MD of the transfer part (training and reference)."""
    _training_data(args)
    for res in HELD_OUT:
        _reference(args, res)


def main() -> int:
    """Run the chosen parts and merge their results into the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["alanine", "transfer", "mlsim", "data", "all"],
                    default="all")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "propagator"))
    ap.add_argument("--bins", type=int, default=36)
    ap.add_argument("--seed", type=int, default=123)
    g = ap.add_argument_group("alanine (molecule-specific propagator)")
    g.add_argument("--tau-ps", type=float, default=20.0)
    g.add_argument("--train-steps", type=int, default=3000)
    g.add_argument("--md-ps", type=float, default=600.0, help="timed MD run length")
    g.add_argument("--cycles", type=int, default=4000, help="sampler cycles")
    g.add_argument("--mh-per-cycle", type=int, default=4)
    g.add_argument("--hmc-steps", type=int, default=20)
    g = ap.add_argument_group("transfer (one proposal, held-out dipeptides)")
    g.add_argument("--train-md-ps", type=float, default=500.0, help="per training MD run")
    g.add_argument("--train-md-runs", type=int, default=2, help="MD runs per training molecule")
    g.add_argument("--ref-ps", type=float, default=1000.0, help="per reference MD run")
    g.add_argument(
        "--ref-runs", type=int, default=4, help="reference MD runs per molecule (x2 for VAL)"
    )
    g.add_argument("--transfer-tau-ps", type=float, default=0.0, help="0: equilibrium conditionals")
    g.add_argument("--transfer-hidden", type=int, default=64)
    g.add_argument("--transfer-steps", type=int, default=3000)
    g.add_argument("--transfer-md-ps", type=float, default=1000.0, help="timed HBonds MD")
    g.add_argument("--transfer-cycles", type=int, default=4000)
    g.add_argument("--transfer-mh-per-cycle", type=int, default=8)
    g.add_argument("--transfer-hmc-steps", type=int, default=10)
    g.add_argument("--transfer-hmc-dt-fs", type=float, default=1.0)
    g = ap.add_argument_group("mlsim (alanine dipeptide, an mlsim potential as the target)")
    _mlsim_arguments(g)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    if args.part == "data":
        _data_only(args)
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("propagator_quick.json" if args.quick else "propagator.json")

    def merge(section: str | None, result: dict) -> None:
        # Re-read just before writing: parts run in other processes merge into the same file.
        out = json.loads(path.read_text()) if path.exists() else {}
        if section is None:
            out.update(result)
        else:
            out[section] = result
        write_json(path, out, indent=2)

    if args.part in ("alanine", "all"):
        merge(None, _alanine(args))
    if args.part in ("transfer", "all"):
        merge("transfer", _transfer(args))
    if args.part in ("mlsim", "all"):
        merge("alanine_mlsim", _mlsim(args))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
