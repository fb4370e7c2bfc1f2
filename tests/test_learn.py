"""mlsim learn: the active-learning loop end to end on a Cu cluster with EMT as the reference,
kill-and-resume with nothing lost or labelled twice, selection, calibration and bad configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlsim.data import Structure, read, write
from mlsim.learn import labelled_dataset, learn, load_learn_config
from mlsim.learn._select import fingerprint, select
from mlsim.models._uncertainty import calibrate, spearman

PYTHON = sys.executable
EMT = "ase.calculators.emt:EMT"


def _cluster() -> Structure:
    """Cu5: a trigonal bipyramid near the EMT minimum (every Cu-Cu pair within bonding range)."""
    a = 2.5
    pos = np.array(
        [[0, 0, 0], [a, 0, 0], [a / 2, a * np.sqrt(3) / 2, 0],
         [a / 2, a / (2 * np.sqrt(3)), a * np.sqrt(2 / 3)],
         [a / 2, a / (2 * np.sqrt(3)), -a * np.sqrt(2 / 3)]]
    )  # fmt: skip
    return Structure([29] * 5, pos)


def _write_config(d: Path, **changes) -> Path:
    write(d / "start.extxyz", [_cluster()])
    train = {
        "data": "unused.extxyz",
        "seed": 1,
        "n_val": 2,
        "ensemble": 2,
        "model": {
            "architecture": "painn",
            "hyperparameters": {"features": 8, "num_interactions": 1, "num_rbf": 6, "cutoff": 4.5},
        },
        "lr": 0.01,
        "batch_size": 4,
        "epochs": 6,
        "early_stopping_patience": 100,
        "threads": 1,
        "plots": False,
    }
    (d / "train.yaml").write_text(yaml.safe_dump(train))
    cfg = {
        "output": "run",
        "structures": "start.extxyz",
        "train": "train.yaml",
        "reference": {"method": EMT},
        "initial_samples": {
            "calculator": EMT,
            "temperatures": [300.0],
            "frames": 6,
            "every": 5,
            "timestep_fs": 2.0,
        },
        "temperatures": [300.0, 1500.0],
        "steps": 40,
        "record_every": 5,
        "timestep_fs": 2.0,
        "lower": 1e-4,
        "upper": 50.0,
        "max_per_iteration": 3,
        "max_labels": 12,
        "max_iterations": 3,
        "train_time_min": 10.0,
        "seed": 5,
    }
    cfg.update(changes)
    (d / "learn.yaml").write_text(yaml.safe_dump(cfg))
    return d / "learn.yaml"


def _label_positions(out: Path) -> np.ndarray:
    return np.array([s.positions for s in labelled_dataset(out)])


def test_loop_end_to_end_labels_within_budget_and_reports(tmp_path):
    cfg = load_learn_config(_write_config(tmp_path))
    state = learn(cfg, progress=False)
    out = tmp_path / "run"
    assert state["status"] == "budget"
    labels = labelled_dataset(out)
    # 6 initial samples + 3 per iteration until the budget of 12 is spent.
    assert len(labels) == state["n_labels"] == 12
    assert len(state["history"]) == 2
    # Every label is the reference's: EMT energy and forces of that exact geometry.
    from ase.calculators.emt import EMT as Emt

    for s in labels:
        atoms = s.to_atoms()
        atoms.calc = Emt()
        assert s.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(s.forces, atoms.get_forces(), atol=1e-8)
    # No geometry labelled twice.
    flat = _label_positions(out).reshape(len(labels), -1)
    assert len(np.unique(flat.round(8), axis=0)) == len(labels)
    for h in state["history"]:
        assert h["n_selected"] == 3
        assert {w["temperature_K"] for w in h["walkers"]} == {300.0, 1500.0}
        assert h["calibration"]["n_atoms"] == 15
    from mlsim.models import load_model

    model = load_model(out / "model.pt")
    assert hasattr(model, "member_energies")
    report = (out / "report.md").read_text()
    assert "| 1 |" in report and "| 2 |" in report and (out / "learn_progress.png").stat().st_size
    # A finished run refuses to start over in the same folder.
    with pytest.raises(ValueError, match="--resume"):
        learn(cfg, progress=False)


def test_sigkill_and_resume_loses_nothing_and_labels_nothing_twice(tmp_path):
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"
    ref_dir.mkdir()
    kill_dir.mkdir()
    learn(load_learn_config(_write_config(ref_dir)), progress=False)
    config = _write_config(kill_dir)
    cmd = [PYTHON, "-m", "mlsim", "learn", str(config), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rng = np.random.default_rng(0)
    kills = 0
    for _attempt in range(8):
        args = cmd + (["--resume"] if (kill_dir / "run" / "state.json").exists() else [])
        log = open(kill_dir / "stderr.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(args, env=env, stderr=log)
        try:
            proc.wait(timeout=float(rng.uniform(2.0, 6.0)))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        finally:
            log.close()
        assert proc.returncode == 0, (kill_dir / "stderr.log").read_text()
        break
    else:
        pytest.fail("the killed run never finished")
    assert kills >= 1
    state = json.loads((kill_dir / "run" / "state.json").read_text())
    ref_state = json.loads((ref_dir / "run" / "state.json").read_text())
    assert state["status"] == ref_state["status"] and state["n_labels"] == ref_state["n_labels"]
    # Exploration is seeded and training resumes bit for bit: the same frames get labelled.
    np.testing.assert_allclose(
        _label_positions(kill_dir / "run"), _label_positions(ref_dir / "run")
    )
    for f in (kill_dir / "run").glob("iter_*/labels.extxyz"):
        idx = [int(s.info["label_index"]) for s in read(f)]
        assert len(idx) == len(set(idx))


def test_selection_picks_what_the_committee_disagrees_on():
    rng = np.random.default_rng(3)
    frames = [
        Structure(_cluster().numbers, _cluster().positions + rng.normal(0, 0.05, (5, 3)))
        for _ in range(30)
    ]
    u = np.full(30, 0.01)
    doubted = [4, 11, 27]
    u[doubted] = [0.2, 0.3, 0.25]
    u[8] = 5.0  # beyond upper: the walker had left the trusted region, not labelled
    assert select(frames, u, lower=0.1, upper=1.0, n_max=10) == doubted
    # With more candidates than slots, farthest-point sampling drops near-duplicates.
    dup = [*frames, Structure(frames[4].numbers, frames[4].positions + 1e-4)]
    u2 = np.append(u, 0.29)
    picked = select(dup, u2, lower=0.1, upper=1.0, n_max=3)
    assert 30 in picked and len(picked) == 3
    assert not {4, 30} <= set(picked)
    f0, f1 = fingerprint(frames[0]), fingerprint(frames[1])
    assert f0.shape == f1.shape and 0 < np.linalg.norm(f0 - f1) < np.linalg.norm(f0)


def test_calibration_recovers_a_known_error_scale():
    rng = np.random.default_rng(7)
    spread = rng.uniform(0.01, 0.4, 5000)
    error = np.linalg.norm(
        rng.normal(size=(5000, 3)) * (3.0 * spread / np.sqrt(3))[:, None], axis=1
    )
    cal = calibrate(spread, error)
    assert cal.scale == pytest.approx(3.0, rel=0.03)
    assert cal.miscalibration_area < 0.02
    assert cal.spearman > 0.6
    # Errors unrelated to the spread: no rank correlation.
    cal2 = calibrate(spread, rng.permutation(error))
    assert abs(cal2.spearman) < 0.05
    assert spearman(np.arange(10), np.arange(10) ** 2) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reference": {"method": "gaussian16"}}, "unknown method 'gaussian16'"),
        ({"lower": 0.5, "upper": 0.1}, "out of order"),
        ({"max_labels": 0}, "label budget"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"temperatures": [300.0, -5.0]}, "temperatures"),
        ({"tempratures": [300.0]}, "unknown keys"),
        ({"converge_temperatures": [900.0]}, "not among temperatures"),
        ({"reference": {"method": "xtb", "basis": "sto-3g"}}, "do not apply"),
    ],
)
def test_bad_configs_fail_before_any_work(tmp_path, changes, message):
    path = _write_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        cfg = load_learn_config(path)
        learn(cfg, progress=False)
    assert not (tmp_path / "run" / "iter_000").exists()


def test_reference_that_cannot_do_an_element_fails_before_any_work(tmp_path):
    path = _write_config(tmp_path, reference={"method": "xtb"})
    write(tmp_path / "start.extxyz", [Structure([29, 92], [[0, 0, 0], [2.5, 0, 0]])])
    with pytest.raises(ValueError, match=r"cannot treat \['U'\]"):
        learn(load_learn_config(path), progress=False)
    assert not (tmp_path / "run" / "iter_000").exists()


def test_reference_may_choose_where_labels_run():
    from mlsim.learn._reference import labeller_options

    method, options = labeller_options(
        {"method": "dft", "basis": "6-31g*", "executor": "dask", "workers": 4, "threads": 2}
    )
    assert method == "dft" and options["executor"] == "dask" and options["workers"] == 4
    with pytest.raises(ValueError, match=r"\['basis'\] do not apply"):
        labeller_options({"method": EMT, "basis": "sto-3g", "workers": 2})
