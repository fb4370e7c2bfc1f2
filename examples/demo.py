"""mlsim demo (`make demo`): an ethanol model driving ASE and OpenMM, side by side.

1. Smoke check of the foundation: the compiled core, and a TorchScript module saved by mlsim in an
   OpenMM Context through openmm-torch.
2. The model: examples/ethanol/model.pt (the shipped DFT-trained model) when it exists. Until it
   does, a small PaiNN trained here in about a minute on GFN2-xTB labels of ethanol geometries
   (cached in demo_output/, so a rerun skips it), and the output says so.
3. Agreement of OpenMM (PythonForce and TorchForce backends) with the ASE calculator on held-out
   ethanol geometries.
4. 1 ps NVE in ASE (VelocityVerlet) and in OpenMM (VerletIntegrator), 0.5 fs steps: energy drift
   per atom per ps; then 1 ps of OpenMM Langevin MD at 300 K (`mlsim md` machinery).
5. Steps per second of the raw model (forward + backward), OpenMM and ASE, measured by the MD-speed
   benchmark (benchmarks/md_speed.py, run as a script), and an energy plot (demo_output/energy.png).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mlsim
from mlsim import _core, units
from mlsim._fileio import atomic_path

ROOT = Path(__file__).resolve().parents[1]
ETHANOL = ROOT / "examples" / "ethanol"
SHIPPED_MODEL = ETHANOL / "model.pt"
OUT = ROOT / "demo_output"
STEPS = 2000  # 1 ps at 0.5 fs
DT_FS = 0.5


class HarmonicWell(torch.nn.Module):
    """A harmonic well in OpenMM units, enough to exercise the TorchForce path end to end."""

    def __init__(self, center_nm: torch.Tensor, k_kj_mol_nm2: float):
        super().__init__()
        self.register_buffer("center", center_nm)
        self.k = k_kj_mol_nm2

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.k * ((positions - self.center) ** 2).sum()


def smoke() -> None:
    """The foundation check: core extension + a TorchForce with a known energy."""
    import openmm

    from mlsim.openmm import import_openmmtorch
    from mlsim.openmm._engine import make_context, potential_energy_of, set_positions

    openmmtorch = import_openmmtorch()
    print(f"mlsim {mlsim.__version__}; C++ core {_core.version()}: {_core.build_info()}")
    x = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.5, 0.0]])  # Angstrom
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "well.pt"
        torch.jit.script(HarmonicWell(torch.zeros(3, 3, dtype=torch.float64), 100.0)).save(
            str(path)
        )
        system = openmm.System()
        for _ in range(3):
            system.addParticle(1.0)
        system.addForce(openmmtorch.TorchForce(str(path)))
        ctx = make_context(system, None, "Reference")
        set_positions(ctx, x)
        e = potential_energy_of(ctx.getState(getEnergy=True))
    # The well works in OpenMM's units: k in kJ/mol/nm^2 on positions in nm.
    expected = float(
        units.energy_from_openmm(0.5 * 100.0 * (units.positions_to_openmm(x) ** 2).sum())
    )
    print(f"smoke: OpenMM TorchForce energy {e:.6f} eV (analytic {expected:.6f})")
    if not np.isclose(e, expected, rtol=1e-6):
        raise SystemExit("demo failed: TorchForce energy does not match the analytic value")


def _geometries(name: str) -> list:
    """Ethanol geometries from the embedded data set (ASE Atoms)."""
    import ase.io

    path = ETHANOL / f"ethanol_{name}_geometries.extxyz.gz"
    if not path.is_file():
        from ase.build import molecule

        return [molecule("CH3CH2OH")]
    return ase.io.read(path, ":")


def quick_xtb_model() -> Path:
    """Label 96 ethanol geometries with GFN2-xTB and train a small PaiNN on them (60 epochs)."""
    from mlsim.data import label
    from mlsim.data._structure import Structure
    from mlsim.train import TrainConfig, train

    work = OUT / "xtb_stand_in"
    model_path = work / "run" / "model.pt"
    if model_path.is_file():
        return model_path
    work.mkdir(parents=True, exist_ok=True)
    data = work / "ethanol_xtb.extxyz"
    pool = [Structure.from_atoms(a) for a in _geometries("train")[::10][:96]]
    print(f"labelling {len(pool)} geometries with GFN2-xTB (tblite), then training ~1-2 min ...")
    label(pool, data, "xtb", progress=False)
    cfg = TrainConfig(
        data=str(data),
        output=str(work / "run"),
        model={
            "architecture": "painn",
            "hyperparameters": {"cutoff": 5.0, "features": 32, "num_interactions": 2},
        },
        epochs=60,  # a fixed count, not a time budget, so every machine trains the same model
        batch_size=16,
        lr=3e-3,
        n_val=8,
        threads=1,
        plots=False,
    )
    if (work / "run" / "checkpoint.pt").exists():  # an interrupted earlier demo: continue it
        train(cfg, resume=True)
    else:
        train(cfg)
    return model_path


def get_model() -> tuple[torch.nn.Module, str, Path | None]:
    """The shipped model, else the xTB-trained stand-in, else (last resort) an untrained PaiNN.

    Returns (model, description, model file or None).
    """
    from mlsim.models import PaiNNModel, load_model

    if SHIPPED_MODEL.is_file():
        from mlsim.models import load_metadata

        # Say what the shipped model was trained on and how it scored on held-out DFT data.
        training = load_metadata(SHIPPED_MODEL).get("training", {})
        test = training.get("test") or {}
        trained_on = (
            f"; trained on {training['n_train']} B3LYP structures, held-out force MAE "
            f"{test['force_mae_meV_per_A']:.1f} meV/A on {test['n_structures']}"
            if "n_train" in training and "force_mae_meV_per_A" in test
            else ""
        )
        desc = f"shipped DFT model {SHIPPED_MODEL.relative_to(ROOT)}{trained_on}"
        return load_model(SHIPPED_MODEL), desc, SHIPPED_MODEL
    print(
        f"NOTE: the shipped model {SHIPPED_MODEL.relative_to(ROOT)} is not available yet (its DFT "
        "data are still being generated); training a small stand-in on GFN2-xTB labels instead."
    )
    try:
        path = quick_xtb_model()
        desc = f"stand-in PaiNN trained here on GFN2-xTB labels ({path.relative_to(ROOT)})"
        return load_model(path), desc, path
    except Exception as exc:  # the demo must still show the engines if training is unavailable
        print(
            f"NOTE: quick training failed ({type(exc).__name__}: {exc}); using an UNTRAINED PaiNN, so"
        )
        print("      the numbers below show engine agreement and speed only, not ethanol physics.")
        torch.manual_seed(0)
        model = torch.jit.script(
            PaiNNModel([1, 6, 8], cutoff=5.0, features=32, num_interactions=2).eval()
        )
        return model, "untrained PaiNN (engines only)", None


def agreement(model: torch.nn.Module, frames: list) -> dict[str, tuple[float, float]]:
    """Max relative energy and force difference OpenMM vs ASE over `frames`, per backend."""
    from mlsim.ase import MLCalculator
    from mlsim.data import Structure
    from mlsim.openmm import create_system
    from mlsim.openmm._engine import evaluate, make_context

    calc = MLCalculator(model)
    out = {}
    for backend in ("python", "torch"):
        system = create_system(model, Structure.from_atoms(frames[0]), backend=backend)
        backend = {"python": "PythonForce", "torch": "TorchForce"}[backend]
        ctx = make_context(system, None, "CPU")
        de = df = 0.0
        for atoms in frames:
            e_mm, f_mm = evaluate(ctx, atoms.positions)
            a = atoms.copy()
            a.calc = calc
            e, f = a.get_potential_energy(), a.get_forces()
            de = max(de, abs(e_mm - e) / abs(e))
            df = max(df, np.abs(f_mm - f).max() / np.abs(f).max())
        out[backend] = (de, df)
    return out


def drift_per_atom_ps(t_ps: np.ndarray, e_ev: np.ndarray, n_atoms: int) -> tuple[float, float]:
    """(slope of a linear fit of the total energy, RMS about it), per atom: eV/ps and eV."""
    fit = np.polyfit(t_ps, e_ev, 1)
    return float(fit[0]) / n_atoms, float(np.std(e_ev - np.polyval(fit, t_ps))) / n_atoms


def ase_nve(model: torch.nn.Module, atoms0) -> dict:
    """1 ps VelocityVerlet with the ASE calculator; energies every 10 steps, wall time."""
    from ase import units as ase_units
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from mlsim.ase import MLCalculator

    atoms = atoms0.copy()
    atoms.calc = MLCalculator(model)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=DT_FS * ase_units.fs)
    t, epot, etot = [], [], []

    def record() -> None:
        t.append(dyn.get_time() / (1000 * ase_units.fs))
        epot.append(atoms.get_potential_energy())
        etot.append(atoms.get_total_energy())

    dyn.attach(record, interval=10)
    t0 = time.perf_counter()
    dyn.run(STEPS)
    wall = time.perf_counter() - t0
    return {
        "t": np.array(t),
        "epot": np.array(epot),
        "etot": np.array(etot),
        "steps_per_s": STEPS / wall,
    }


def openmm_md(model: torch.nn.Module, atoms0, ensemble: str) -> dict:
    """1 ps of OpenMM MD through mlsim.openmm.run_md (the `mlsim md` engine)."""
    import shutil

    from mlsim.data import Structure
    from mlsim.openmm import run_md

    out = OUT / f"openmm_{ensemble}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time the demo is run
    res = run_md(
        model,
        Structure.from_atoms(atoms0),
        out,
        steps=STEPS,
        timestep_fs=DT_FS,
        temperature_k=300.0,
        ensemble=ensemble,
        report_interval=10,
        checkpoint_interval=500,
        seed=0,
        progress=False,
    )
    d = np.genfromtxt(res.log, delimiter=",", names=True)
    return {
        "t": d["Time_ps"],
        "epot": units.energy_from_openmm(d["Potential_Energy_kJmole"]),
        "etot": units.energy_from_openmm(d["Total_Energy_kJmole"]),
        "temperature": d["Temperature_K"],
        "steps_per_s": res.steps_per_second,
        "dir": out,
    }


def speeds(model_path: Path | None) -> tuple[dict[str, float], str]:
    """Steps per CPU-second of raw model, OpenMM and ASE on ethanol: the MD-speed benchmark's
    engines section, run as its own script (benchmarks are not part of the mlsim package)."""
    out = OUT / "md_speed.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "md_speed.py"),
        "--engines-only",
        "--systems", "ethanol",
        "--steps", "200",
        "--rounds", "3",
        "--threads", "1",
        "--out", str(out),
        "--no-progress",
    ]  # fmt: skip
    if model_path is not None:  # else the benchmark times its own untrained PaiNN
        cmd += ["--model", str(model_path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(
            f"demo failed: benchmarks/md_speed.py exited {res.returncode}\n{res.stderr}"
        )
    engines = json.loads(out.read_text())["engines"]
    methods = engines["systems"]["ethanol"]["methods"]
    return {k: m["steps_per_s_cpu"] for k, m in methods.items()}, engines["model"]


def plot(ase_run: dict, nve: dict, nvt: dict, n_atoms: int, path: Path) -> None:
    """Total and potential energy per atom vs time for the three runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for run, label, c in ((ase_run, "ASE NVE", "C0"), (nve, "OpenMM NVE", "C1")):
        axes[0].plot(run["t"], (run["etot"] - run["etot"][0]) / n_atoms * 1e3, c, label=label)
    axes[0].set(xlabel="time (ps)", ylabel="E_total - E_total(0) (meV/atom)", title="NVE, 0.5 fs")
    axes[0].legend()
    for run, label, c in (
        (ase_run, "ASE NVE", "C0"),
        (nve, "OpenMM NVE", "C1"),
        (nvt, "OpenMM Langevin 300 K", "C2"),
    ):
        axes[1].plot(run["t"], run["epot"] - run["epot"].min(), c, label=label, lw=0.8)
    axes[1].set(xlabel="time (ps)", ylabel="E_pot - min (eV)", title="potential energy")
    axes[1].legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:  # matplotlib picks the format by extension
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main() -> None:
    """Run the demo and print what it measured."""
    torch.set_num_threads(1)  # a fair, reproducible comparison on a shared machine
    smoke()
    OUT.mkdir(exist_ok=True)
    model, desc, model_path = get_model()
    print(f"model: {desc}")
    test = _geometries("test")
    start = test[0]
    agree = agreement(model, test[:5])
    for backend, (de, df) in agree.items():
        print(
            f"OpenMM {backend:11s} vs ASE on {min(5, len(test))} held-out geometries: "
            f"max rel. energy diff {de:.1e}, max rel. force diff {df:.1e}"
        )
    ase_run = ase_nve(model, start)
    nve = openmm_md(model, start, "nve")
    nvt = openmm_md(model, start, "nvt")
    speed, timed = speeds(model_path)
    n = len(start)
    print(
        f"\n1 ps NVE at {DT_FS} fs from 300 K (total energy: linear-fit drift, RMS about the fit):"
    )
    for name, run in (("ASE VelocityVerlet", ase_run), ("OpenMM Verlet", nve)):
        drift, rms = drift_per_atom_ps(run["t"], run["etot"], n)
        print(f"  {name:20s} {drift:+.1e} eV/atom/ps, {rms:.1e} eV/atom")
    print(
        f"1 ps OpenMM Langevin 300 K: mean T {nvt['temperature'].mean():.0f} K; files in {nvt['dir'].relative_to(ROOT)}"
    )
    print(
        "\nspeed on ethanol (steps per CPU-second, 1 thread, interleaved best of 3 x 200 steps;"
        f" benchmarks/md_speed.py, {OUT.relative_to(ROOT)}/md_speed.json):"
    )
    if model_path is None:
        print(f"  (timed {timed})")
    raw = speed["raw model (fwd+bwd)"]
    for name, sps in speed.items():
        extra = (
            ""
            if name.startswith("raw")
            else f"  ({100 * (raw / sps - 1):+.0f}% time per step vs raw)"
        )
        print(f"  {name:28s} {sps:8.1f}{extra}")
    print(
        f"  (whole `mlsim md` runs, wall clock on this machine, incl. reporting: NVE {nve['steps_per_s']:.1f}, Langevin {nvt['steps_per_s']:.1f})"
    )
    plot(ase_run, nve, nvt, n, OUT / "energy.png")
    print(f"\nenergy plot: {(OUT / 'energy.png').relative_to(ROOT)}")
    worst = max(max(v) for v in agree.values())
    if worst > 1e-4:
        raise SystemExit(f"demo failed: OpenMM and ASE disagree (relative difference {worst:.1e})")


if __name__ == "__main__":
    sys.exit(main())
