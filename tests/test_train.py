"""mlsim.train end to end on a tiny EMT data set: learning, resume, torchrun, evaluate CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlsim.data import Structure, write
from mlsim.models import load_model, load_trainable
from mlsim.train import evaluate, load_config, read_structures, train

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def _emt_structures(n: int, seed: int) -> list[Structure]:
    """Rattled 5-atom Cu/Al clusters labelled with ASE's EMT (cheap, smooth, real forces)."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5], [1.6, 1.6, 1.6]])
    out = []
    for _ in range(n):
        atoms = Atoms(
            numbers=rng.choice([13, 29], size=5),
            positions=base + rng.normal(scale=0.15, size=(5, 3)),
        )
        atoms.calc = EMT()
        out.append(
            Structure(
                atoms.numbers,
                atoms.positions,
                energy=atoms.get_potential_energy(),
                forces=atoms.get_forces(),
            )
        )
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder with train.extxyz (24 structures), test.extxyz (8) and a base config."""
    d = tmp_path_factory.mktemp("tiny")
    write(d / "train.extxyz", _emt_structures(24, 0))
    write(d / "test.extxyz", _emt_structures(8, 1))
    cfg = {
        "data": "train.extxyz",
        "test_data": "test.extxyz",
        "seed": 3,
        "n_val": 4,
        "model": {
            "architecture": "painn",
            "hyperparameters": {"features": 8, "num_interactions": 1, "num_rbf": 6, "cutoff": 4.0},
        },
        "energy_weight": 1.0,
        "forces_weight": 10.0,
        "lr": 0.005,
        "batch_size": 8,
        "epochs": 4,
        "ema_decay": 0.9,
        "threads": 1,
        "plots": False,
    }
    (d / "base.yaml").write_text(yaml.safe_dump(cfg))
    return d


def _config(d: Path, name: str, **changes) -> Path:
    """Write a variant of the base config with a given output folder."""
    cfg = yaml.safe_load((d / "base.yaml").read_text())
    cfg.update(changes, output=name)
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """Model weights stored in a checkpoint."""
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def reference_run(tiny) -> Path:
    """A 4-epoch single-process run, shared by the resume and torchrun tests."""
    train(load_config(_config(tiny, "ref")), progress=False)
    return tiny / "ref"


def test_tiny_ani_training_reduces_loss_and_writes_artifacts(tiny) -> None:
    """ANI on the tiny set: loss falls, log/plots/model are written and the model evaluates."""
    cfg = _config(
        tiny,
        "ani",
        epochs=6,
        lr=0.02,
        plots=True,
        model={
            "architecture": "ani",
            "hyperparameters": {
                "hidden": [16],
                "radial_cutoff": 4.0,
                "angular_cutoff": 3.0,
                "radial_num_shifts": 8,
                "angular_num_shifts": 2,
                "angular_num_sections": 2,
            },
        },
    )
    summary = train(load_config(cfg), progress=False)
    out = tiny / "ani"
    rows = list(__import__("csv").DictReader((out / "log.csv").open()))
    assert len(rows) == 6
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.6 * losses[0], losses
    assert float(rows[-1]["val_force_mae_meV_per_A"]) < float(rows[0]["val_force_mae_meV_per_A"])
    for f in ["model.pt", "checkpoint.pt", "parity.png", "learning_curve.png", "summary.json"]:
        assert (out / f).is_file(), f
    model = load_model(out / "model.pt")
    assert model.elements == [13, 29]
    m = evaluate(model, read_structures(tiny / "test.extxyz"))
    assert m["force_mae_meV_per_A"] == pytest.approx(
        summary["test"]["force_mae_meV_per_A"], rel=1e-6
    )
    eager, meta = load_trainable(out / "model.pt")
    assert meta["spec"]["architecture"] == "ani" and isinstance(eager, torch.nn.Module)


def test_resume_continues_bit_for_bit(tiny, reference_run) -> None:
    """2 epochs, 'crash', --resume to 4 epochs == 4 epochs straight: identical weights and log."""
    cfg = load_config(_config(tiny, "resumed"))
    assert train(cfg, progress=False, stop_after_epochs=2)["stopped"] == "interrupted"
    with pytest.raises(ValueError, match="--resume"):
        train(cfg, progress=False)
    train(cfg, resume=True, progress=False)
    a, b = _weights(reference_run / "checkpoint.pt"), _weights(tiny / "resumed" / "checkpoint.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (reference_run / "log.csv").read_text().split("\n")[1].split(",")[2:] == (
        (tiny / "resumed" / "log.csv").read_text().split("\n")[1].split(",")[2:]
    )


def test_torchrun_two_processes_match_single_process(tiny, reference_run) -> None:
    """2 gloo ranks (global batch 8 = 2 x 4) reproduce the single-process weights."""
    cfg = _config(tiny, "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "mlsim",
        "train",
        str(cfg),
        "--no-progress",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tiny)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _weights(reference_run / "checkpoint.pt"), _weights(tiny / "ddp" / "checkpoint.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    assert json.loads((tiny / "ddp" / "summary.json").read_text())["world_size"] == 2


def test_evaluate_cli_json(tiny, reference_run, capsys) -> None:
    """`mlsim evaluate MODEL DATA --json` prints the contract keys with correct values."""
    from mlsim.cli import main

    model_path = reference_run / "model.pt"
    assert main(["evaluate", str(model_path), str(tiny / "test.extxyz"), "--json"]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    for k in [
        "n_structures",
        "energy_mae_meV_per_atom",
        "energy_rmse_meV_per_atom",
        "force_mae_meV_per_A",
        "force_rmse_meV_per_A",
    ]:
        assert k in got, k
    assert got["n_structures"] == 8
    assert "evaluate" in captured.err  # the progress bar goes to stderr, never into the JSON
    # Independent check of the metric definitions from raw predictions (float64 references).
    from mlsim.train import predict

    s = read_structures(tiny / "test.extxyz")
    p = predict(load_model(model_path), s)
    f_ref = np.concatenate([x.forces for x in s])
    assert got["force_mae_meV_per_A"] == pytest.approx(
        1000 * np.abs(p["forces_pred"] - f_ref).mean(), rel=1e-9
    )
    assert got["force_rmse_meV_per_A"] == pytest.approx(
        1000 * np.sqrt(((p["forces_pred"] - f_ref) ** 2).mean()), rel=1e-9
    )
    de = (p["energy_pred"] - np.array([x.energy for x in s])) / 5 * 1000
    assert got["energy_mae_meV_per_atom"] == pytest.approx(np.abs(de).mean(), rel=1e-9)
    assert main(["evaluate", str(model_path), str(tiny / "missing.xyz")]) == 1
    assert "not found" in capsys.readouterr().err


def test_ensemble_training_gives_distinct_members(tiny) -> None:
    """ensemble: 2 trains two differently initialised members; model.pt exposes member_energies."""
    train(load_config(_config(tiny, "ens", ensemble=2, epochs=1)), progress=False)
    model = load_model(tiny / "ens" / "model.pt")
    from mlsim.train import collate

    b = collate(read_structures(tiny / "test.extxyz"))
    members = model.member_energies(*b.inputs())
    assert members.shape == (2, 8)
    assert (members[0] - members[1]).abs().max() > 1e-4  # a real spread, not two copies
    torch.testing.assert_close(model(*b.inputs()), members.mean(0))


def test_config_errors_are_clear(tiny) -> None:
    """Typos and bad values in the YAML are reported by name."""
    bad = tiny / "bad.yaml"
    bad.write_text("data: train.extxyz\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(bad)
    bad.write_text("data: train.extxyz\nschedule: linear\n")
    with pytest.raises(ValueError, match="schedule"):
        load_config(bad)


def test_separate_validation_file_trains_on_the_whole_pool(tiny) -> None:
    """val_data: every pool structure trains and early stopping watches the other file."""
    from mlsim.train import split_indices

    write(tiny / "val.extxyz", _emt_structures(5, 2))
    cfg = load_config(_config(tiny, "valfile", val_data="val.extxyz", n_val=None, epochs=2))
    train_idx, val_idx = split_indices(24, cfg)
    assert sorted(train_idx.tolist()) == list(range(24)) and len(val_idx) == 0
    summary = train(cfg, progress=False)
    assert summary["n_train"] == 24 and summary["n_val"] == 5
    # The reported validation metrics are those of val.extxyz under the saved model.
    got = evaluate(load_model(tiny / "valfile" / "model.pt"), read_structures(tiny / "val.extxyz"))
    assert got["force_mae_meV_per_A"] == pytest.approx(
        summary["val"]["force_mae_meV_per_A"], rel=1e-4
    )
    # n_train still picks a seeded subset of the pool.
    sub = load_config(_config(tiny, "valfile_sub", val_data="val.extxyz", n_val=None, n_train=10))
    assert len(split_indices(24, sub)[0]) == 10
    with pytest.raises(ValueError, match="either val_data"):
        load_config(_config(tiny, "both", val_data="val.extxyz", n_val=3))
    with pytest.raises(ValueError, match="only 24 structures remain$"):
        split_indices(
            24, load_config(_config(tiny, "x", val_data="val.extxyz", n_val=None, n_train=30))
        )
