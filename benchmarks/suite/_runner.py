"""`mlsim bench`: run accuracy, cost and MD-speed parts side by side, then collect one report.

Paths default to this source checkout (the benchmarks folder holding this package and the
repository around it), not to the working directory, so the report lands in benchmarks/results
from wherever `mlsim bench` is started.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsim._fileio import write_json as _write_json
from mlsim._fileio import write_text
from mlsim.data import Structure
from suite._methods import (
    CHARGE,
    SPIN,
    Method,
    Skipped,
    dft_method,
    gaff2_method,
    mlsim_method,
    openmm_forcefield_method,
    rdkit_method,
    xtb_method,
)
from suite._paths import BENCHMARKS, EXAMPLES, QUICK_DIR, RESULTS, WORK, shown

if TYPE_CHECKING:
    from suite._md import MDSpeedConfig

__all__ = [
    "BENCHMARKS",
    "PARTS",
    "QUICK_DIR",
    "RESULTS",
    "BenchConfig",
    "find_test_set",
    "md_config",
    "run_bench",
    "run_part",
    "write_json",
]

PARTS = ("accuracy", "cost", "md")
# File each part writes in the results folder.
PART_FILES = {"accuracy": "accuracy", "cost": "cost", "md": "md_speed"}
_DATA_SUFFIXES = {".xyz", ".extxyz", ".npz", ".h5", ".hdf5", ".traj", ".db"}


@dataclass
class BenchConfig:
    """What `mlsim bench` runs and where it writes (defaults: the full < 30 min run)."""

    quick: bool = False
    only: tuple[str, ...] = PARTS
    out_dir: Path = RESULTS
    peer_dir: Path = RESULTS
    test_set: Path | None = None
    model: Path = EXAMPLES / "model.pt"
    md_model: Path | None = None  # alanine dipeptide model for the MD part; None: train one
    work_dir: Path = WORK
    threads: int = 1
    charge: int = CHARGE  # of the test-set molecule, for the xTB and DFT rows (never guessed)
    spin: int = SPIN
    max_structures: int | None = None
    progress: bool = True
    env: dict[str, Any] = field(default_factory=dict)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (mlsim._fileio)."""
    _write_json(path, data, indent=2, default=str)


def _log(cfg: BenchConfig, msg: str) -> None:
    """Progress line on stderr."""
    if cfg.progress:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _environment(threads: int) -> dict[str, Any]:
    """Describe the machine and software versions the numbers were measured with."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("mlsim", "torch", "openmm", "openmmtorch", "rdkit", "tblite", "pyscf", "ase"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    try:  # a shared machine's load skews every timing: record it next to them
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": load,
        "threads": threads,
        "python": platform.python_version(),
        "versions": versions,
    }


def _set_threads(threads: int) -> None:
    """Pin every back-end to the same thread count so cost ratios compare like with like."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # tblite (OpenMP), read when its runtime starts
    import torch

    torch.set_num_threads(threads)  # pyscf: the DFT labeller is given `threads` itself


DEFAULT_TEST_SET = "ethanol_test_dft.extxyz.gz"  # examples/ethanol/README.md: 300 held-out


def find_test_set(root: Path = EXAMPLES) -> Path | None:
    """Return the held-out DFT-labelled ethanol test set under examples/ethanol, if it exists.

    The shipped held-out set (ethanol_test_dft) first: other test sets sit next to it (e.g. the
    hot active-learning set) and must not take its place by sorting first. Otherwise prefers
    `*test*dft*`; unlabelled `*geometries*` files and the xTB-labelled copy are never the reference.
    """
    if (root / DEFAULT_TEST_SET).is_file():
        return root / DEFAULT_TEST_SET
    if not root.is_dir():
        return None
    cands = [
        p
        for p in sorted(root.iterdir())
        if p.is_file()
        and _DATA_SUFFIXES & {x.lower() for x in p.suffixes}  # also ethanol_test.extxyz.gz
        and "test" in p.name.lower()
        and not any(w in p.name.lower() for w in ("xtb", "geometries", "failed"))
    ]
    cands.sort(key=lambda p: "dft" not in p.name.lower())
    return cands[0] if cands else None


def _reference_label(s: Structure) -> str:
    """Name the reference method from a frame's info (written by `mlsim label`), else assume DFT."""
    info = s.info
    functional, basis = info.get("functional") or info.get("xc"), info.get("basis")
    if functional and basis:
        return f"{str(functional).upper()}/{str(basis).upper()} (DFT)"
    method = info.get("method") or info.get("level_of_theory")
    return str(method) if method and str(method).lower() != "dft" else "B3LYP/6-31G* (DFT)"


def _read_growing(path: Path) -> list[Structure]:
    """Read a labelled set that a background labelling job may be appending to right now.

    A read can catch a frame half-written (a torn gzip member); one retry a moment later sees
    the completed file.
    """
    from suite._accuracy import load_structures

    try:
        return load_structures(path)
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OSError):
        time.sleep(3.0)
        return load_structures(path)


def _structures(cfg: BenchConfig) -> tuple[list[Structure], str, Path | None]:
    """Return (labelled structures, reference label, file or None) for accuracy and cost.

    Falls back to a synthetic xTB-labelled ethanol set in --quick mode (a smoke run must not need
    the DFT set); a full run without the DFT set raises Skipped for the accuracy part.
    """
    from suite._accuracy import synthetic_ethanol

    path = cfg.test_set or find_test_set()
    limit = cfg.max_structures or (6 if cfg.quick else None)
    if path is not None:
        try:
            structures = _read_growing(path)[:limit]
        except (ValueError, EOFError, OSError) as exc:
            if cfg.test_set is not None:  # the user named this file: their error to see
                raise
            raise Skipped(f"found {path} but cannot use it: {exc}") from exc
        return structures, _reference_label(structures[0]), Path(path)
    if not cfg.quick:
        raise Skipped(
            f"held-out DFT test set not found under {EXAMPLES} (give one with --test-set)"
        )
    xtb = xtb_method(cfg.charge, cfg.spin)
    structures = []
    for s in synthetic_ethanol(limit or 6, seed=0):
        s.energy, s.forces = xtb.evaluate(s)
        structures.append(s)
    return structures, "GFN2-xTB (synthetic smoke set; DFT test set not found)", None


def _rdkit_template(structures: list[Structure]) -> Structure:
    """Return the first structure whose bonds RDKit can perceive (heavily distorted frames may fail)."""
    from suite._methods import rdkit_molecule

    last: Exception | None = None
    for s in structures[:20]:
        try:
            rdkit_molecule(s)
            return s
        except ValueError as exc:
            last = exc
    raise Skipped(f"RDKit could not perceive the molecule's bonds: {last}")


def _factories(cfg: BenchConfig, structures: list[Structure], with_dft: bool) -> dict[str, Any]:
    """Return method factories in report order; each raises Skipped when it cannot run here."""

    def rdkit(kind: str) -> Callable[[], Method]:
        """Factory for an RDKit force field set up on the first perceivable frame."""

        def make() -> Method:
            """Build it (perceiving bonds on the first usable frame)."""
            return rdkit_method(kind, _rdkit_template(structures))

        return make

    def dft() -> Method:
        """DFT timing is skipped in --quick."""
        if not with_dft:
            raise Skipped("skipped in --quick (one DFT energy+gradient takes seconds)")
        return dft_method(charge=cfg.charge, spin=cfg.spin, threads=cfg.threads)

    return {
        "mlsim": lambda: mlsim_method(cfg.model),
        "xtb": lambda: xtb_method(cfg.charge, cfg.spin),
        "mmff94": rdkit("MMFF94"),
        "uff": rdkit("UFF"),
        "charmm36": lambda: openmm_forcefield_method(_rdkit_template(structures)),
        "gaff": lambda: gaff2_method(_rdkit_template(structures)),
        "dft": dft,
    }


def _part_accuracy(cfg: BenchConfig) -> dict[str, Any]:
    """Accuracy vs the reference labels for every method (DFT is the reference, not a contestant)."""
    from suite._accuracy import run_accuracy

    structures, reference, source = _structures(cfg)
    factories = _factories(cfg, structures, with_dft=False)
    factories.pop("dft")  # DFT made the labels
    sec = run_accuracy(structures, reference, factories, cfg.out_dir, progress=cfg.progress)
    sec["test_set"] = "synthetic" if source is None else shown(source)
    sec["xtb_crosscheck"] = None if source is None else _xtb_crosscheck(cfg, structures, source)
    return sec


def _xtb_crosscheck(
    cfg: BenchConfig, structures: list[Structure], source: Path
) -> dict[str, Any] | None:
    """Recompute the data set's stored xTB labels (its `*xtb*` sibling) on the same geometries.

    The xTB row is mlsim's labeller; reproducing the shipped labels to numerical precision shows
    the stored file is current (same tblite, same settings, same units) and the row measures
    GFN2-xTB itself.
    """
    sibling = source.with_name(source.name.replace("dft", "xtb"))
    if sibling == source or not sibling.exists():
        return None
    from suite._accuracy import load_structures

    try:
        stored = {int(s.info["label_index"]): s for s in load_structures(sibling)}
    except (ValueError, KeyError, ImportError):
        return None
    xtb = xtb_method(cfg.charge, cfg.spin)
    df, de, n = 0.0, [], 0
    for s in structures[:10]:
        ref = stored.get(int(s.info.get("label_index", -1)))
        if ref is None or not np.allclose(ref.positions, s.positions, atol=1e-6):
            continue
        e, f = xtb.evaluate(s)
        df = max(df, float(np.abs(f - ref.forces).max()))
        de.append(e - ref.energy)
        n += 1
    if n == 0:
        return None
    return {
        "file": shown(sibling),
        "n": n,
        "max_force_diff_ev_per_a": df,
        "energy_diff_spread_ev": float(np.ptp(de)),
    }


def _geometries_only() -> tuple[list[Structure], str]:
    """Unlabelled ethanol geometries for timing: the test-set geometry file, else synthetic ones."""
    from suite._accuracy import synthetic_ethanol

    path = EXAMPLES / "ethanol_test_geometries.extxyz.gz"
    if path.exists():
        try:
            from mlsim.data import read

            return [read(path)[i] for i in range(3)], shown(path)
        except (ImportError, ValueError, IndexError):
            pass
    return synthetic_ethanol(3, seed=0), "synthetic ethanol geometries"


def _cost_model_factory(cfg: BenchConfig) -> Callable[[], Method]:
    """The model to time: the shipped one, else the MD part's model of the same architecture.

    Cost depends on the architecture and the molecule, not on the weights, so when the shipped
    ethanol model is not there yet the alanine model trained by the MD part (H, C, N, O; the
    shipped recipe's architecture) times the same network on the same ethanol geometries.
    """

    def make() -> Method:
        """The shipped model, else the stand-in (labelled as such)."""
        try:
            return mlsim_method(cfg.model)
        except Skipped as missing:
            stand_in = cfg.work_dir / "alanine_model" / "model.pt"
            if cfg.md_model is not None:
                stand_in = cfg.md_model
            if not stand_in.exists():
                raise missing
            m = mlsim_method(stand_in)
            m.label = "mlsim model (MD part's weights, same architecture; cost only)"
            m.notes = f"{shown(cfg.model)} not found; timed {shown(stand_in)} instead"
            return m

    return make


def _part_cost(cfg: BenchConfig) -> dict[str, Any]:
    """Seconds per energy+force call per method, DFT included on 2 structures (full run only)."""
    from suite._cost import run_cost

    try:
        structures, _, path = _structures(cfg)
        source = "synthetic" if path is None else shown(path)
    except Skipped:  # timing needs geometries only, not DFT labels
        structures, source = _geometries_only()
    factories = _factories(cfg, structures, with_dft=not cfg.quick)
    factories["mlsim"] = _cost_model_factory(cfg)
    sec = run_cost(
        factories,
        structures[:3],
        n_structures={"dft": 2},
        min_seconds=0.1 if cfg.quick else 2.0,
        progress=cfg.progress,
    )
    sec["structures"] = source
    sec["threads"] = cfg.threads
    sec["alanine"] = _alanine_cost(cfg)
    return sec


def _alanine_cost(cfg: BenchConfig) -> dict[str, Any]:
    """The same per-call timing on alanine dipeptide (22 atoms): how each method's cost grows.

    Uses the MD part's model (trained on this molecule); DFT is left out here (minutes per call).
    """
    from suite._cost import run_cost
    from suite._methods import openmm_system_method
    from suite._mlmd import XTB_FRAMES

    model = cfg.md_model or cfg.work_dir / "alanine_model" / "model.pt"
    if cfg.quick or not Path(model).exists():
        why = "--quick" if cfg.quick else f"no alanine model at {model} (run the md part first)"
        return {"status": "skipped", "reason": why}
    try:
        from mlsim.testsystems import alanine_dipeptide
    except ImportError as exc:
        return {"status": "skipped", "reason": f"mlsim.testsystems not available: {exc}"}
    ms = alanine_dipeptide(solvent="vacuum", constraints=None)
    numbers = ms.numbers
    s0 = Structure(numbers=numbers, positions=ms.positions)  # Angstrom
    factories = {
        "mlsim": lambda: mlsim_method(model),
        "xtb": xtb_method,  # alanine dipeptide: neutral singlet (the defaults)
        "mmff94": lambda: rdkit_method("MMFF94", s0),
        "amber14": lambda: openmm_system_method(ms.system, numbers, "amber14", "Amber14 (OpenMM)"),
    }
    frames = [s0]
    sampled = cfg.work_dir / XTB_FRAMES
    if sampled.exists():  # three MD geometries rather than one minimum
        from mlsim.data import read

        frames = [read(sampled)[i] for i in range(3)]
    sec = run_cost(factories, frames, min_seconds=2.0, progress=cfg.progress)
    return {"status": "ok", **sec}


def md_config(cfg: BenchConfig) -> MDSpeedConfig:
    """The MD-speed benchmark's settings for this run (--quick: tiny, no training, no water box)."""
    from suite._md import MDSpeedConfig
    from suite._mlmd import ml_alanine_factory

    return MDSpeedConfig(
        model=cfg.model,
        ml_alanine=ml_alanine_factory(
            cfg.quick, cfg.work_dir, cfg.md_model, cfg.progress, architecture_of=cfg.model
        ),
        threads=cfg.threads,
        min_seconds=0.2 if cfg.quick else 5.0,
        rounds=1 if cfg.quick else 3,
        systems={"ethanol": 20} if cfg.quick else {"ethanol": 200, "water_box": 5},
        progress=cfg.progress,
    )


def _part_md(cfg: BenchConfig) -> dict[str, Any]:
    """MD speed: Amber14 vs mlsim on alanine dipeptide in OpenMM, and the model in every engine."""
    from suite._md import run_md_speed

    return run_md_speed(md_config(cfg))


_PART_FUNCS = {"accuracy": _part_accuracy, "cost": _part_cost, "md": _part_md}


def run_part(
    part: str, cfg: BenchConfig, func: Callable[[BenchConfig], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Run one part (its own function, or `func`) and return its JSON section with status and env.

    A broken back-end is recorded as failed, with the reason, and does not stop the caller.
    """
    _log(cfg, f"{part} ...")
    t0 = time.perf_counter()
    try:
        sec = {"status": "ok", **(func or _PART_FUNCS[part])(cfg)}
    except Skipped as exc:
        sec = {"status": "skipped", "reason": str(exc)}
    except (ValueError, FileNotFoundError):
        raise  # bad user input (a named file, an option): one clean error line from the CLI
    except Exception as exc:  # a broken back-end must not lose the other parts' results
        traceback.print_exc(file=sys.stderr)
        sec = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    sec.update(
        name=PART_FILES[part],
        quick=cfg.quick,
        elapsed_s=time.perf_counter() - t0,
        env=_environment(cfg.threads),
    )
    _log(cfg, f"{part}: {sec['status']} in {sec['elapsed_s']:.1f} s")
    return sec


# Sections other scripts merge into a part's file (md_speed.py --fast writes "alanine_fast"):
# a rerun of the part keeps them instead of dropping what it does not measure itself.
_FOREIGN_SECTIONS = ("alanine_fast",)


def _kept_sections(path: Path) -> dict[str, Any]:
    """The sections of an existing results file that its part does not write itself."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return {}  # an unreadable old file is replaced whole
    return {k: old[k] for k in _FOREIGN_SECTIONS if isinstance(old, dict) and k in old}


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the selected parts, write their JSON, then write report.md and report.json; return the report."""
    from suite._report import PEER_BENCHMARKS, collect_peer, render_markdown

    unknown = set(cfg.only) - set(PARTS) - {"report"}  # "report" alone: only re-collect
    if unknown:
        raise ValueError(
            f"unknown benchmark part(s) {sorted(unknown)}; known: {[*PARTS, 'report']}"
        )
    if cfg.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {cfg.threads}")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    _set_threads(cfg.threads)
    env = _environment(cfg.threads)
    for part in ("accuracy", "md", "cost"):  # md first: cost may time the model md trained
        if part in cfg.only:
            path = cfg.out_dir / f"{PART_FILES[part]}.json"
            write_json(path, {**_kept_sections(path), **run_part(part, cfg)})
    # The report is rebuilt from whatever JSON files exist, so `--only cost` keeps older accuracy.
    sections: dict[str, Any] = {}
    for part in PARTS:
        path = cfg.out_dir / f"{PART_FILES[part]}.json"
        sections[PART_FILES[part]] = json.loads(path.read_text()) if path.exists() else None
    for name in PEER_BENCHMARKS:
        sections[name] = collect_peer(cfg.peer_dir, name)
    report = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": cfg.quick or any(v and v.get("quick") for v in sections.values()),
        "env": env,
        "sections": sections,
    }
    write_json(cfg.out_dir / "report.json", report)
    md = cfg.out_dir / "report.md"
    write_text(md, render_markdown(report))
    _log(cfg, f"wrote {md} and {cfg.out_dir / 'report.json'}")
    return report
