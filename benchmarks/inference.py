"""Inference cost per energy+forces call: mlsim (original and optimize_for_inference) vs peers.

One thread everywhere (torch.set_num_threads(1), OMP/MKL_NUM_THREADS=1, OpenMM Threads=1).
Systems: ethanol (9 atoms), alanine dipeptide (22), periodic water boxes of 1,029, 3,000 and
10,125 atoms (~1 g/cm^3). Methods:
  mlsim          a PaiNN of the shipped size (32 features, 2 interactions, 16 Bessel functions,
                 5 A; random weights: speed does not depend on them), forward + autograd forces
  mlsim-fast     optimize_for_inference(mlsim): fused C++ kernel (backend "cpp")
  mlsim-fast-ts  the same transformation, TorchScript backend (no compiler, no custom op)
  xtb            GFN2-xTB (tblite), molecules only
  ani2x          TorchANI's ANI-2x architecture, one network set, random weights (no download)
  mace           MACE (32x0e+32x1o, 2 interactions, L=3, correlation 3; random weights), if
                 mace-torch imports; its graph is built outside the timed call
  amber14        OpenMM Amber14 (vacuum for the dipeptide; TIP3P + PME 1 nm for water)
Timing: each size runs in its own process, the methods interleaved round by round; per call the
median over rounds of CPU time (process_time, robust on a shared machine) and wall time. Peak
memory: one process per (size, method) that builds the method and runs two calls; VmHWM (peak
resident set) from /proc/self/status, and its rise over the process before the method was built.
Then the user paths of the fast model (compute_properties, MLCalculator, OpenMM TorchForce and
PythonForce) against its bare call, the batched evaluation of replicas, and the exactness of the
transformation.

    .venv/bin/python benchmarks/inference.py [--rounds 3] [--sizes 9 22 1029 3000 10125] [--quick]
    .venv/bin/python benchmarks/inference.py --paths-only --sizes 9 22   # user paths into the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "inference.json"
SIZES = {9: "ethanol", 22: "alanine dipeptide", 1029: "water", 3000: "water", 10125: "water"}
METHODS = ("mlsim", "mlsim-fast", "mlsim-fast-ts", "xtb", "ani2x", "mace", "amber14")
WATER_SIDE = {1029: 7, 3000: 10, 10125: 15}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class Skip(Exception):
    """A method that does not apply to (or cannot run on) a system; the message says why."""


# ---------------------------------------------------------------------------------- systems
def structure(n_atoms: int):
    """(ASE Atoms, OpenMM topology or None) of the benchmark system with n_atoms atoms."""
    from ase.build import molecule

    if n_atoms == 9:
        return molecule("CH3CH2OH"), None
    if n_atoms == 22:
        from ase import Atoms
        from openmm import app, unit

        from mlsim.testsystems._alanine import ALANINE_PDB

        pdb = app.PDBFile(str(ALANINE_PDB))
        pos = pdb.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        nums = [a.element.atomic_number for a in pdb.topology.atoms()]
        return Atoms(numbers=nums, positions=pos), pdb.topology
    return water_box(WATER_SIDE[n_atoms])


def water_box(n_side: int, spacing: float = 3.1, seed: int = 0):
    """n_side^3 randomly oriented rigid waters on a cubic lattice (~1 g/cm^3), with a topology."""
    from ase import Atoms
    from ase.build import molecule
    from openmm import app, unit
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    w = molecule("H2O").positions
    pos = []
    for idx in np.ndindex(n_side, n_side, n_side):
        rot = Rotation.random(random_state=rng).as_matrix()
        pos.append(w @ rot.T + spacing * (np.array(idx) + 0.5))
    length = spacing * n_side
    atoms = Atoms(
        "OH2" * n_side**3, positions=np.concatenate(pos), cell=np.eye(3) * length, pbc=True
    )
    top = app.Topology()
    chain = top.addChain()
    o, h = app.element.oxygen, app.element.hydrogen
    for _ in range(n_side**3):
        res = top.addResidue("HOH", chain)
        a_o = top.addAtom("O", o, res)
        top.addBond(a_o, top.addAtom("H1", h, res))
        top.addBond(a_o, top.addAtom("H2", h, res))
    top.setPeriodicBoxVectors(np.eye(3) * length / 10.0 * unit.nanometer)
    return atoms, top


def painn_model():
    """Scripted random-weight PaiNN of the shipped size for H, C, N, O (float32)."""
    import torch

    from mlsim.models import PaiNNModel

    torch.manual_seed(0)
    model = PaiNNModel([1, 6, 7, 8], cutoff=5.0, features=32, num_interactions=2, num_rbf=16)
    return torch.jit.script(model.eval())


def model_inputs(atoms, dtype=None):
    """(numbers, positions, cell, pbc, batch) tensors of one structure."""
    import torch

    dtype = dtype or torch.float32
    return (
        torch.tensor(atoms.numbers, dtype=torch.long),
        torch.tensor(atoms.positions, dtype=dtype),
        torch.tensor(np.asarray(atoms.cell.array), dtype=dtype).unsqueeze(0),
        torch.tensor(atoms.pbc).unsqueeze(0),
        torch.zeros(len(atoms), dtype=torch.long),
    )


# ---------------------------------------------------------------------------------- methods
def make_runner(method: str, atoms, topology) -> Callable[[], None]:
    """A function doing one energy+forces evaluation of `atoms` with `method` (raises Skip)."""
    import torch

    torch.set_num_threads(1)
    if method.startswith("mlsim"):
        model = painn_model()
        if method != "mlsim":
            from mlsim.models import optimize_for_inference

            model = optimize_for_inference(
                model, backend="cpp" if method == "mlsim-fast" else "torch"
            )
        n, x, cell, pbc, b = model_inputs(atoms)

        def run() -> None:
            pos = x.clone().requires_grad_(True)
            energy = model(n, pos, cell, pbc, b).sum()
            torch.autograd.grad([energy], [pos])

        return run
    if method == "xtb":
        if atoms.pbc.any():
            raise Skip(
                "GFN2-xTB is a molecular reference here; periodic boxes take minutes per call"
            )
        from tblite.ase import TBLite

        mol = atoms.copy()
        mol.calc = TBLite(method="GFN2-xTB", verbosity=0)
        return _ase_runner(mol)
    if method == "ani2x":
        return _ani_runner(atoms)
    if method == "mace":
        return _mace_runner(atoms)
    if method == "amber14":
        return _amber_runner(atoms, topology)
    raise ValueError(method)


def _ase_runner(atoms) -> Callable[[], None]:
    """Energy+forces of an ASE calculator; the positions move by 1e-7 A so nothing is cached."""
    state = {"sign": 1.0}

    def run() -> None:
        atoms.positions[0, 0] += state["sign"] * 1e-7
        state["sign"] = -state["sign"]
        atoms.get_potential_energy()
        atoms.get_forces()

    return run


def _ani_runner(atoms) -> Callable[[], None]:
    """ANI-2x architecture (one network set, random weights), cell list for periodic boxes."""
    import os as _os

    _os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
    import torch
    from torchani.arch import Assembler
    from torchani.models import SYMBOLS_2X

    asm = Assembler(periodic_table_index=True)
    asm.set_symbols(SYMBOLS_2X)
    asm.set_global_cutoff_fn("cosine")
    asm.set_aev_computer(radial="ani2x", angular="ani2x", strategy="pyaev")
    asm.set_atomic_networks(ctor="ani2x")
    asm.set_neighborlist("cell_list" if atoms.pbc.any() else "all_pairs")
    asm.set_gsaes_as_self_energies("wb97x-631gd")
    torch.manual_seed(0)
    model = asm.assemble(1).eval()
    model.requires_grad_(False)
    species = torch.tensor(atoms.numbers, dtype=torch.long).unsqueeze(0)
    x = torch.tensor(atoms.positions, dtype=torch.float32).unsqueeze(0)
    kw = {}
    if atoms.pbc.any():
        kw = {
            "cell": torch.tensor(np.asarray(atoms.cell.array), dtype=torch.float32),
            "pbc": torch.tensor(atoms.pbc),
        }

    def run() -> None:
        pos = x.clone().requires_grad_(True)
        energy = model((species, pos), **kw).energies.sum()
        torch.autograd.grad([energy], [pos])

    return run


def _mace_runner(atoms) -> Callable[[], None]:
    """MACE of a size like the shipped PaiNN (random weights); graph built once, not timed."""
    import logging
    import warnings

    import torch

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    try:
        # e3nn 0.4.4 (mace-torch's pin) torch.load()s its own constants file, which holds
        # slices; torch >= 2.6 loads those with weights_only=True only when allowed.
        with torch.serialization.safe_globals([slice]):
            from e3nn import o3
        from mace import data, modules, tools
    except Exception as exc:  # noqa: BLE001 - not installed, or not importable with this torch
        raise Skip(f"mace-torch not importable ({type(exc).__name__}: {exc})") from None
    zs = [1, 6, 7, 8]
    torch.manual_seed(0)
    model = modules.MACE(
        r_max=5.0,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=modules.RealAgnosticResidualInteractionBlock,
        interaction_cls_first=modules.RealAgnosticResidualInteractionBlock,
        num_interactions=2,
        num_elements=len(zs),
        hidden_irreps=o3.Irreps("32x0e + 32x1o"),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(zs)),
        avg_num_neighbors=40.0,
        atomic_numbers=zs,
        correlation=3,
        gate=torch.nn.functional.silu,
    ).eval()
    table = tools.AtomicNumberTable(zs)
    config = data.config_from_atoms(atoms)
    graph = data.AtomicData.from_config(config, z_table=table, cutoff=5.0)
    loader = tools.torch_geometric.dataloader.DataLoader([graph], batch_size=1, shuffle=False)
    batch = next(iter(loader)).to_dict()

    def run() -> None:
        model(dict(batch), compute_force=True, training=False)

    return run


def _amber_runner(atoms, topology) -> Callable[[], None]:
    """OpenMM Amber14 energy+forces on the CPU platform, one thread."""
    if topology is None:
        raise Skip("Amber14 has no parameters for ethanol (no protein/nucleic/water residue)")
    from openmm import app, unit

    from mlsim.openmm._engine import make_context, set_positions

    if atoms.pbc.any():
        ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
        system = ff.createSystem(
            topology, nonbondedMethod=app.PME, nonbondedCutoff=1.0 * unit.nanometer
        )
    else:
        ff = app.ForceField("amber14-all.xml")
        system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff)
    ctx = make_context(system, None, "CPU", threads=1)
    cell = np.asarray(atoms.cell.array) if atoms.pbc.any() else None

    def run() -> None:
        set_positions(ctx, atoms.positions, cell)
        ctx.getState(getEnergy=True, getForces=True)

    return run


# ---------------------------------------------------------------------------------- workers
def vm_kb(key: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM) in kB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def worker_time(n_atoms: int, methods: list[str], rounds: int, budget: float) -> dict:
    """Interleaved rounds of every method on one system: per-call CPU and wall medians (ms)."""
    atoms, top = structure(n_atoms)
    runners: dict[str, Callable[[], None]] = {}
    out: dict[str, dict] = {}
    for m in methods:
        try:
            runners[m] = make_runner(m, atoms.copy(), top)
        except Skip as exc:
            out[m] = {"skipped": str(exc)}
    calls: dict[str, int] = {}
    for m, run in runners.items():
        t0 = time.perf_counter()
        run()  # set-up, TorchScript profiling runs, kernel loading: not timed
        if time.perf_counter() - t0 < 5.0:  # a second warm-up only where it is cheap
            run()
        t0 = time.perf_counter()
        run()
        calls[m] = max(1, int(budget / max(time.perf_counter() - t0, 1e-6)))
    samples = {m: {"cpu": [], "wall": []} for m in runners}
    for _ in range(rounds):
        for m, run in runners.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(calls[m]):
                run()
            samples[m]["cpu"].append((time.process_time() - c0) / calls[m] * 1e3)
            samples[m]["wall"].append((time.perf_counter() - t0) / calls[m] * 1e3)
    for m, s in samples.items():
        out[m] = {
            "ms_cpu": statistics.median(s["cpu"]),
            "ms_wall": statistics.median(s["wall"]),
            "ms_cpu_rounds": s["cpu"],
            "calls_per_round": calls[m],
        }
    return out


def worker_memory(n_atoms: int, method: str) -> dict:
    """Peak resident memory of building `method` and two energy+forces calls on the system."""
    atoms, top = structure(n_atoms)
    import torch

    torch.set_num_threads(1)
    before = vm_kb("VmRSS")
    try:
        run = make_runner(method, atoms, top)
    except Skip as exc:
        return {"skipped": str(exc)}
    run()
    run()
    peak = vm_kb("VmHWM")
    return {"peak_rss_mb": peak / 1024, "rise_mb": (peak - before) / 1024}


def worker_paths(n_atoms: int, rounds: int, budget: float) -> dict:
    """The fast model through each user path vs the same path with the original model (ms).

    "model call (fast)" is the bare call (forward + autograd forces, as mlsim-fast above): the
    floor the user paths are measured against, in the same process and rounds.
    """
    import torch

    from mlsim.ase import MLCalculator
    from mlsim.models import compute_properties, optimize_for_inference

    torch.set_num_threads(1)
    atoms, _ = structure(n_atoms)
    original = painn_model()
    fast = optimize_for_inference(original, backend="cpp")
    args = model_inputs(atoms)

    def bare(model):
        n, x, cell, pbc, b = args

        def run() -> None:
            pos = x.clone().requires_grad_(True)
            torch.autograd.grad([model(n, pos, cell, pbc, b).sum()], [pos])

        return run

    def props(model):
        return lambda: compute_properties(model, *args)

    def ase(model, **kw):
        a = atoms.copy()
        a.calc = MLCalculator(model, **kw)
        return _ase_runner(a)

    def omm(model, backend):
        from mlsim.data import Structure
        from mlsim.openmm import create_system
        from mlsim.openmm._engine import make_context, set_positions

        s = Structure.from_atoms(atoms)
        system = create_system(model, s, backend=backend)
        ctx = make_context(system, None, "CPU", threads=1)
        cell = np.asarray(atoms.cell.array) if s.periodic else None

        def run() -> None:
            set_positions(ctx, atoms.positions, cell)
            ctx.getState(getEnergy=True, getForces=True)

        return run

    runners = {
        "model call (fast)": bare(fast),
        "compute_properties (original)": props(original),
        "compute_properties (fast)": props(fast),
        "MLCalculator (original)": ase(original),
        "MLCalculator(fast=True)": ase(original, fast=True),
        "OpenMM TorchForce (original)": omm(original, "torch"),
        "OpenMM TorchForce (fast)": omm(fast, "torch"),
        "OpenMM PythonForce (original)": omm(original, "python"),
        "OpenMM PythonForce (fast)": omm(fast, "python"),
    }
    for run in runners.values():
        run()
        run()
    calls = {}
    for m, run in runners.items():
        t0 = time.perf_counter()
        run()
        calls[m] = max(1, int(budget / max(time.perf_counter() - t0, 1e-6)))
    samples = {m: [] for m in runners}
    walls = {m: [] for m in runners}
    for _ in range(rounds):
        for m, run in runners.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(calls[m]):
                run()
            samples[m].append((time.process_time() - c0) / calls[m] * 1e3)
            walls[m].append((time.perf_counter() - t0) / calls[m] * 1e3)
    floor = statistics.median(samples["model call (fast)"])
    return {
        m: {
            "ms_cpu": statistics.median(samples[m]),
            "ms_wall": statistics.median(walls[m]),
            "over_model_call_fast": statistics.median(samples[m]) / floor,
        }
        for m in runners
    }


def worker_replicas(replicas: int, rounds: int) -> dict:
    """Ethanol replicas: one batched call of the fast model vs one call per replica (ms each)."""
    import torch

    from mlsim.models import optimize_for_inference

    torch.set_num_threads(1)
    fast = optimize_for_inference(painn_model(), backend="cpp")
    atoms, _ = structure(9)
    rng = np.random.default_rng(0)
    mols = []
    for _ in range(replicas):
        a = atoms.copy()
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        mols.append(a)
    n = torch.tensor(np.concatenate([a.numbers for a in mols]))
    x = torch.tensor(np.concatenate([a.positions for a in mols]), dtype=torch.float32)
    cell = torch.zeros(replicas, 3, 3)
    pbc = torch.zeros(replicas, 3, dtype=torch.bool)
    b = torch.arange(replicas).repeat_interleave(len(atoms))
    singles = [model_inputs(a) for a in mols]

    def batched() -> None:
        pos = x.clone().requires_grad_(True)
        torch.autograd.grad([fast(n, pos, cell, pbc, b).sum()], [pos])

    def one_by_one() -> None:
        for nn_, xx, cc, pp, bb in singles:
            pos = xx.clone().requires_grad_(True)
            torch.autograd.grad([fast(nn_, pos, cc, pp, bb).sum()], [pos])

    out = {}
    for run in (batched, one_by_one):
        run()
        run()
    for name, run in (("batched", batched), ("one_by_one", one_by_one)):
        times = []
        for _ in range(rounds):
            c0 = time.process_time()
            for _ in range(20):
                run()
            times.append((time.process_time() - c0) / 20 / replicas * 1e3)
        out[name] = {"ms_cpu_per_replica": statistics.median(times)}
    return out


def exactness() -> dict:
    """The transformation's accuracy on the shipped ethanol model (float64 and float32)."""
    import torch

    from mlsim.models import compute_properties, load_model, optimize_for_inference
    from mlsim.models._fast import _eager_painn, spline_error

    shipped = ROOT / "examples" / "ethanol" / "model.pt"
    original = _eager_painn(load_model(shipped))
    out: dict = {"model": str(shipped.relative_to(ROOT)), "spline": spline_error(original)}
    ethanol, _ = structure(9)
    ethanol.positions += np.random.default_rng(1).normal(scale=0.08, size=ethanol.positions.shape)
    box, _ = water_box(4)
    for dtype in (torch.float64, torch.float32):
        model = original.to(dtype)
        for backend in ("cpp", "torch"):
            fast = optimize_for_inference(model, backend=backend)
            for name, atoms in (("ethanol", ethanol), ("water_192", box)):
                args = model_inputs(atoms, dtype)
                ref = compute_properties(model, *args, stress=bool(atoms.pbc.any()))
                got = compute_properties(fast, *args, stress=bool(atoms.pbc.any()))
                shift = model.atomic_shift.self_energy[model.element_index.species_map[args[0]]]
                e_net = float(ref["energy"].detach().sum() - shift.sum())
                row = {
                    "energy_abs_eV": float((got["energy"] - ref["energy"]).detach().abs().max()),
                    "energy_rel_network_part": float(
                        (got["energy"] - ref["energy"]).detach().abs().max() / abs(e_net)
                    ),
                    "forces_max_abs_over_max_force": float(
                        (got["forces"] - ref["forces"]).abs().max() / ref["forces"].abs().max()
                    ),
                }
                if "stress" in ref:
                    row["stress_max_abs_over_max"] = float(
                        (got["stress"] - ref["stress"]).abs().max() / ref["stress"].abs().max()
                    )
                out[f"{str(dtype).removeprefix('torch.')}/{backend}/{name}"] = row
    return out


# ---------------------------------------------------------------------------------- driver
def _spawn(args: list[str], rss_cap_mb: float | None = None) -> dict:
    """Run this script as a worker in a fresh one-thread process; its last stdout line is JSON.

    rss_cap_mb: stop the worker once its resident memory passes this (a shared machine must not
    run out of memory for a peer's benchmark); the result then says so.
    """
    env = {**os.environ, **ONE_THREAD}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak = 0.0
    while rss_cap_mb is not None and proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status", encoding="ascii") as fh:
                rss = next((int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")), 0)
        except OSError:
            break
        peak = max(peak, rss / 1024)
        if peak > rss_cap_mb:
            proc.kill()
            proc.communicate()
            return {"skipped": f"peak memory above {rss_cap_mb:.0f} MB (stopped there)"}
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else "failed"}
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run all workers, print the tables, write benchmarks/results/inference.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per method per round")
    ap.add_argument("--quick", action="store_true", help="9 and 1029 atoms, 2 rounds")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument(
        "--rss-cap-mb", type=float, default=8000.0, help="stop a memory worker above this"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--paths-only",
        action="store_true",
        help="re-run only the user paths (9, 22 atoms and --sizes' 1029) into the existing JSON",
    )
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "time":
            res = worker_time(int(rest[0]), rest[3:], int(rest[1]), float(rest[2]))
        elif kind == "memory":
            res = worker_memory(int(rest[0]), rest[1])
        elif kind == "paths":
            res = worker_paths(int(rest[0]), int(rest[1]), float(rest[2]))
        elif kind == "replicas":
            res = worker_replicas(int(rest[0]), int(rest[1]))
        else:
            res = exactness()
        print(json.dumps(res))
        return 0
    if args.quick:
        args.sizes, args.rounds = [9, 1029], 2
    if args.paths_only:
        return paths_main(args)
    import torch

    from mlsim._fileio import write_json
    from mlsim.models._fast import kernel_available

    ok, why = kernel_available()  # compile once here, not inside a timed worker
    if not ok:
        print(f"the fused C++ kernel is not available: {why}", file=sys.stderr)
    results: dict = {
        "benchmark": "inference",
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "threads": 1,
        "rounds": args.rounds,
        "note": (
            "ms per energy+forces call; ms_cpu = process CPU time (robust to other jobs on a "
            "shared machine), ms_wall = elapsed; medians over interleaved rounds"
        ),
        "systems": {},
    }
    for n in args.sizes:
        print(f"{n} atoms ({SIZES[n]}): timing ...", flush=True)
        timing = _spawn(["time", str(n), str(args.rounds), str(args.budget), *args.methods])
        memory = {}
        if not args.no_memory:
            for m in args.methods:
                memory[m] = _spawn(["memory", str(n), m], rss_cap_mb=args.rss_cap_mb)
        rows = {}
        for m in args.methods:
            rows[m] = {**timing.get(m, {"error": timing.get("error", "?")}), **memory.get(m, {})}
        results["systems"][str(n)] = {"name": SIZES[n], "atoms": n, "methods": rows}
        _print_table(n, rows)
        write_json(args.out, results)  # partial results survive a later failure
    print("user paths of the fast model ...", flush=True)
    results["paths"] = _paths(args)
    results["replicas"] = {"ethanol_x16": _spawn(["replicas", "16", str(args.rounds)])}
    results["exactness"] = _spawn(["exactness"])
    _summarise(results)
    write_json(args.out, results)
    print(json.dumps({k: results[k] for k in ("paths", "replicas", "summary")}, indent=1))
    print(f"wrote {args.out}")
    return 0


def _paths(args: argparse.Namespace) -> dict:
    """User-path rows for the molecules (and the 1,029-atom box when among the sizes)."""
    paths = {}
    for n in args.sizes:
        if n in (9, 22, 1029):
            print(f"user paths, {n} atoms ...", flush=True)
            paths[str(n)] = _spawn(["paths", str(n), str(args.rounds), str(args.budget)])
    return paths


def paths_main(args: argparse.Namespace) -> int:
    """--paths-only: measure the user paths and put them into the existing JSON."""
    from mlsim._fileio import write_json

    try:
        results = json.loads(args.out.read_text())
    except (OSError, ValueError):
        results = {"benchmark": "inference"}
    results["paths"] = _paths(args)
    results["paths_load_average_at_start"] = os.getloadavg()
    write_json(args.out, results)
    for n, rows in results["paths"].items():
        print(f"{n} atoms:")
        for m, r in rows.items():
            if "ms_cpu" in r:
                print(
                    f"  {m:32s} {r['ms_cpu']:9.3f} ms cpu {r['ms_wall']:9.3f} ms wall "
                    f"{r['over_model_call_fast']:6.2f}x model call"
                )
            else:
                print(f"  {m:32s} {r}")
    print(f"wrote {args.out}")
    return 0


def _print_table(n: int, rows: dict) -> None:
    """One system's rows: ms per call (CPU, wall), ratio to mlsim-fast, peak memory."""
    base = rows.get("mlsim-fast", {}).get("ms_cpu")
    print(f"{'method':14s} {'ms cpu':>10s} {'ms wall':>10s} {'x fast':>8s} {'peak MB':>9s}")
    for m, r in rows.items():
        if "ms_cpu" not in r:
            print(f"{m:14s} {r.get('skipped') or r.get('error')}")
            continue
        ratio = f"{r['ms_cpu'] / base:8.1f}" if base else " " * 8
        peak = r.get("peak_rss_mb")
        print(
            f"{m:14s} {r['ms_cpu']:10.3f} {r['ms_wall']:10.3f} {ratio} "
            f"{'-' if peak is None else str(round(peak)):>9}"
        )


def _summarise(results: dict) -> None:
    """Speed-ups of mlsim-fast over mlsim and the peers, and the issue's goals, per size."""
    summary = {}
    for n, sysres in results["systems"].items():
        rows = sysres["methods"]
        fast = rows.get("mlsim-fast", {})
        if "ms_cpu" not in fast:
            continue
        entry = {
            "mlsim_fast_ms_cpu": fast["ms_cpu"],
            "us_per_atom_cpu": fast["ms_cpu"] * 1e3 / int(n),
        }
        for m, r in rows.items():
            if m != "mlsim-fast" and "ms_cpu" in r:
                entry[f"{m}_over_fast"] = r["ms_cpu"] / fast["ms_cpu"]
        if "peak_rss_mb" in fast:
            entry["peak_rss_mb"] = fast["peak_rss_mb"]
        summary[n] = entry
    results["summary"] = summary


if __name__ == "__main__":
    sys.exit(main())
