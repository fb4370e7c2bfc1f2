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
from mlsim.models import load_model
from mlsim.models._io import load_trainable
from mlsim.train import evaluate, load_config, train
from mlsim.train._data import read_structures

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


def _free_port() -> int:
    """A TCP port nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes_match_single_process(tiny, reference_run) -> None:
    """2 gloo ranks (global batch 8 = 2 x 4) reproduce the single-process weights."""
    cfg = _config(tiny, "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",  # not a fixed one: other test runs may share the host
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
    from mlsim.train._batching import collate

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
    from mlsim.train._data import split_indices

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


# --- config validation (issue #17, item 10) ----------------------------------------------------
_PAINN = {"architecture": "painn", "hyperparameters": {"cutoff": 4.0}}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("n_val: -3", "n_val = -3 is invalid: expected an integer >= 1, or null"),
        ("n_val: 0", "n_val = 0 is invalid: expected an integer >= 1, or null"),
        ("n_train: 0", "n_train = 0 is invalid: expected an integer >= 1, or null"),
        ("epochs: 2.5", "epochs = 2.5 is invalid: expected an integer >= 1"),
        ("epochs: [1]", r"epochs = \[1\] is invalid: expected an integer >= 1"),
        ("epochs: true", "epochs = True is invalid: expected an integer >= 1"),
        ("lr: 0", "lr = 0 is invalid: expected a number > 0"),
        ("lr: -0.001", "lr = -0.001 is invalid: expected a number > 0"),
        ("lr: fast", "lr = 'fast' is invalid: expected a number > 0"),
        ("lr: .nan", "lr = nan is invalid: expected a number > 0"),
        ("threads: 0", "threads = 0 is invalid: expected an integer >= 1, or null"),
        ("threads: -2", "threads = -2 is invalid: expected an integer >= 1, or null"),
        ("seed: -1", "seed = -1 is invalid: expected an integer >= 0"),
        ("batch_size: 0", "batch_size = 0 is invalid: expected an integer >= 1"),
        ("plots: 'no'", "plots = 'no' is invalid: expected true or false"),
        ("val_fraction: 1.5", "val_fraction = 1.5 is invalid: expected a number > 0 and < 1"),
        ("ema_decay: 1", "ema_decay = 1 is invalid: expected a number >= 0 and < 1"),
        ("time_budget_min: 0", "time_budget_min = 0 is invalid: expected a number > 0, or null"),
        ("early_stopping_patience: 0", "early_stopping_patience = 0 is invalid"),
        ("grad_clip: -1", "grad_clip = -1 is invalid: expected a number >= 0"),
        ("dtype: float16", "dtype = 'float16' is invalid: expected one of 'float32', 'float64'"),
        ("output: 7", "output = 7 is invalid: expected a path"),
        ("test_data: ''", "test_data = '' is invalid: expected a path"),
        ("min_lr: 0.1", "min_lr = 0.1 is invalid: expected a number <= lr = 0.001"),
        ("model: painn", "model = 'painn' is invalid: expected a mapping"),
        (
            "model: {architecture: painn, hyperparameters: {cutoff: 0}}",
            "model.hyperparameters.cutoff = 0 is invalid: expected a number > 0",
        ),
        (
            "model: {architecture: painn, hyperparameters: {cutoff: -5.0}}",
            "model.hyperparameters.cutoff = -5.0 is invalid: expected a number > 0",
        ),
        (
            "model: {architecture: ani, hyperparameters: {radial_cutoff: 0.0}}",
            "model.hyperparameters.radial_cutoff = 0.0 is invalid: expected a number > 0",
        ),
        (
            "model: {architecture: ani, hyperparameters: {hidden: [16, 0]}}",
            r"model.hyperparameters.hidden = \[16, 0\] is invalid: expected a list of integers",
        ),
        (
            "model: {architecture: painn, hyperparameters: {features: 8.5}}",
            "model.hyperparameters.features = 8.5 is invalid: expected an integer >= 1",
        ),
        (
            "model: {architecture: painn, hyperparameters: {cutof: 4}}",
            r"model.hyperparameters \(for painn\): unknown keys \['cutof'\]",
        ),
        ("model: {architecture: pain}", "model.architecture = 'pain' is invalid: expected one of"),
        ("model: {hyperparameters: {}}", "model.architecture is required"),
        ("lr: [0.1", "not valid YAML"),
    ],
)
def test_config_rejects_bad_values_naming_key_value_and_allowed(tmp_path, line, message) -> None:
    """Every key is checked for type and range; the error names the key, the value, what is allowed."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: train.extxyz\n{line}\n")
    with pytest.raises(ValueError, match=message) as err:
        load_config(bad)
    assert str(bad) in str(err.value)  # and the file


def test_config_error_through_the_cli_is_one_clear_line(tmp_path, capsys) -> None:
    """`mlsim train` with a wrongly typed value: exit 1 and the key's message, no traceback."""
    from mlsim.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("data: train.extxyz\nlr: fast\n")
    assert main(["train", str(bad), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"mlsim train: error: {bad}: lr = 'fast' is invalid: expected a number > 0" in err
    assert "Traceback" not in err


def test_config_yaml_numbers_are_normalised(tmp_path) -> None:
    """PyYAML reads `1e-3` as a string and `100.0` as a float: both mean what the user wrote."""
    cfg_path = tmp_path / "ok.yaml"
    cfg_path.write_text("data: train.extxyz\nlr: 1e-3\nmin_lr: 1e-6\nepochs: 100.0\nn_val: 3\n")
    cfg = load_config(cfg_path)
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.min_lr == 1e-6
    assert cfg.epochs == 100 and isinstance(cfg.epochs, int)
    assert cfg.threads is None  # torch's default thread count


def test_config_validation_also_guards_configs_built_in_python(tiny) -> None:
    """train() checks a TrainConfig made without load_config before doing anything."""
    from mlsim.train import TrainConfig

    cfg = TrainConfig(data=str(tiny / "train.extxyz"), output=str(tiny / "pyneg"), n_val=-2)
    with pytest.raises(ValueError, match="n_val = -2 is invalid"):
        train(cfg, progress=False)
    assert not (tiny / "pyneg" / "checkpoint.pt").exists()


def test_config_schema_lists_every_key_once() -> None:
    """SCHEMA is the one list of keys: every TrainConfig field, with a type, a rule and a doc line."""
    import dataclasses

    from mlsim.train import TrainConfig, config_reference
    from mlsim.train._config import HYPERPARAMETERS, SCHEMA, hyperparameter_defaults

    assert list(SCHEMA) == [f.name for f in dataclasses.fields(TrainConfig)]
    for name, opt in SCHEMA.items():
        assert opt.kind and opt.doc and opt.allowed(), name
        assert opt.resume in ("fixed", "free"), name
    assert SCHEMA["lr"].resume == "fixed" and SCHEMA["epochs"].resume == "free"
    # Every constructor option of each architecture has a rule (and nothing else does).
    for arch, table in HYPERPARAMETERS.items():
        assert set(table) == set(hyperparameter_defaults(arch)), arch
    rows = config_reference()
    keys = [r["key"] for r in rows]
    assert "lr" in keys and "model.hyperparameters.cutoff (painn)" in keys
    assert "base_dir" not in keys
    lr = next(r for r in rows if r["key"] == "lr")
    assert lr == {
        "key": "lr",
        "type": "float",
        "default": "0.001",
        "allowed": "a number > 0",
        "description": SCHEMA["lr"].doc,
        "on_resume": "fixed",
    }


# --- --resume compares the new config with the checkpoint's --------------------------------------
def test_resume_rejects_changed_settings_and_logs_allowed_changes(tiny, capsys) -> None:
    """lr/batch_size/model changes are refused with old -> new values; a new epoch limit is logged."""
    cfg = load_config(_config(tiny, "changes"))
    train(cfg, progress=False, stop_after_epochs=1)
    before = (tiny / "changes" / "checkpoint.pt").read_bytes()
    changed = load_config(
        _config(
            tiny,
            "changes",
            lr=0.01,
            batch_size=4,
            model={
                "architecture": "painn",
                "hyperparameters": {
                    "features": 8,
                    "num_interactions": 1,
                    "num_rbf": 6,
                    "cutoff": 4.5,
                },
            },
        )
    )
    with pytest.raises(ValueError, match="cannot resume") as err:
        train(changed, resume=True, progress=False)
    msg = str(err.value)
    assert "lr: 0.005 -> 0.01" in msg
    assert "batch_size: 8 -> 4" in msg
    assert "model.hyperparameters.cutoff: 4.0 -> 4.5" in msg
    assert "epochs" not in msg and str(tiny / "changes" / "checkpoint.pt") in msg
    assert (tiny / "changes" / "checkpoint.pt").read_bytes() == before  # untouched
    # Through the command line: one clear line, exit status 1.
    from mlsim.cli import main

    capsys.readouterr()
    assert main(["train", str(tiny / "changes.yaml"), "--resume", "--no-progress"]) == 1
    assert "lr: 0.005 -> 0.01" in capsys.readouterr().err
    # A setting that may change (the epoch limit) is allowed, and logged in train.log and stderr.
    more = load_config(_config(tiny, "changes", epochs=2))
    summary = train(more, resume=True, progress=False)
    assert summary["epochs"] == 2
    log = (tiny / "changes" / "train.log").read_text()
    assert "changed settings (old -> new): epochs: 4 -> 2" in log
    assert "epochs: 4 -> 2" in capsys.readouterr().err
    # The same data file named by its absolute path is no change; another file is.
    same = load_config(_config(tiny, "changes", epochs=2, data=str(tiny / "train.extxyz")))
    assert train(same, resume=True, progress=False)["epochs"] == 2
    (tiny / "copy.extxyz").write_text((tiny / "train.extxyz").read_text())
    other = load_config(_config(tiny, "changes", epochs=2, data="copy.extxyz"))
    with pytest.raises(ValueError, match="data: 'train.extxyz' -> 'copy.extxyz'"):
        train(other, resume=True, progress=False)


def test_resume_rejects_a_new_epoch_count_under_the_cosine_schedule(tiny) -> None:
    """Cosine is laid out over `epochs`: changing it on resume would silently keep the old length."""
    cfg = load_config(_config(tiny, "cos", schedule="cosine"))
    train(cfg, progress=False, stop_after_epochs=1)
    with pytest.raises(ValueError, match="epochs: 4 -> 6"):
        train(load_config(_config(tiny, "cos", schedule="cosine", epochs=6)), resume=True)


# --- data files are checked before training starts ----------------------------------------------
def test_data_paths_are_checked_before_training(tiny, capsys) -> None:
    """A typo in test_data (or val_data, data) fails at once, naming the key, not after the run."""
    from mlsim.cli import main

    missing = load_config(_config(tiny, "typo", test_data="tset.extxyz"))
    with pytest.raises(FileNotFoundError, match="test_data: data file .*tset.extxyz not found"):
        train(missing, progress=False)
    assert not (tiny / "typo" / "checkpoint.pt").exists()  # nothing was trained
    assert main(["train", str(tiny / "typo.yaml"), "--no-progress"]) == 1
    assert "test_data: data file" in capsys.readouterr().err

    (tiny / "garbage.extxyz").write_text("this is not\nan extxyz file\n")
    bad_val = load_config(_config(tiny, "badval", val_data="garbage.extxyz", n_val=None))
    with pytest.raises(ValueError, match="val_data: cannot read .*garbage.extxyz as extxyz"):
        train(bad_val, progress=False)
    assert not (tiny / "badval" / "checkpoint.pt").exists()

    (tiny / "cut.extxyz").write_text((tiny / "test.extxyz").read_text()[:150])
    cut = load_config(_config(tiny, "cut", test_data="cut.extxyz"))
    with pytest.raises(ValueError, match="test_data: cannot read .*cut.extxyz.*first frame ends"):
        train(cut, progress=False)
    no_data = load_config(_config(tiny, "nodata", data="trian.extxyz"))
    with pytest.raises(FileNotFoundError, match="^data: data file .*trian.extxyz not found"):
        train(no_data, progress=False)


# --- item 13: a time budget that ends training before the lr decayed ----------------------------
def test_time_budget_before_lr_decay_warns(tiny, reference_run, capsys) -> None:
    """The under-trained warning goes to stderr, train.log and summary.json; a full run has none."""
    cfg = load_config(_config(tiny, "budget", time_budget_min=1e-6, epochs=50))
    capsys.readouterr()
    summary = train(cfg, progress=False)
    assert summary["stop_reason"] == "time_budget" and summary["epochs"] == 1
    assert len(summary["warnings"]) == 1
    warning = summary["warnings"][0]
    assert "before the learning rate decayed" in warning and "under-trained" in warning
    assert "lr = 0.005" in warning and "time_budget_min" in warning
    assert "mlsim train: warning: the time budget" in capsys.readouterr().err
    assert "warning: the time budget" in (tiny / "budget" / "train.log").read_text()
    on_disk = json.loads((tiny / "budget" / "summary.json").read_text())
    assert on_disk["warnings"] == [warning] and on_disk["final_lr"] == 0.005
    assert json.loads((reference_run / "summary.json").read_text())["warnings"] == []
    # Cosine decays every epoch, but one epoch of fifty is far from annealed: also a warning.
    cos = load_config(
        _config(tiny, "budget_cos", schedule="cosine", time_budget_min=1e-6, epochs=50)
    )
    (cos_warning,) = train(cos, progress=False)["warnings"]
    assert "the cosine schedule over 50 epochs is less than half done" in cos_warning


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_time_budget_clock_counts_wall_or_cpu_time(tiny, clock) -> None:
    """Time spent waiting (another job has the core) counts against a wall budget, not a CPU one."""
    import time

    from mlsim.train import Callback

    class Waits(Callback):
        """Sleeps after every batch: wall time passes, this process uses no CPU."""

        def on_batch_end(self, trainer, loss) -> None:  # noqa: ANN001
            time.sleep(0.25)

    cfg = load_config(
        _config(tiny, f"clock_{clock}", time_budget_min=0.5 / 60, epochs=4, time_budget_clock=clock)
    )
    summary = train(cfg, callbacks=[Waits()], progress=False)
    if clock == "wall":  # every epoch sleeps past the 0.5 s budget: one epoch
        assert summary["stop_reason"] == "time_budget" and summary["epochs"] == 1
        assert summary["train_time_s"] >= 0.5
    else:  # the sleeps are not CPU time: the tiny epochs fit the budget, all four run
        assert summary["stop_reason"] != "time_budget" and summary["epochs"] == 4
        assert summary["train_time_s"] < 0.5


@pytest.mark.parametrize("ext", ["extxyz", "extxyz.gz", "npz", "db", "traj"])
def test_data_file_check_accepts_every_format_and_names_the_key(tmp_path, ext) -> None:
    """The pre-training check reads every format mlsim writes and rejects garbage, naming the key."""
    from mlsim.train._trainer import _check_data_file

    good = tmp_path / f"good.{ext}"
    write(good, _emt_structures(2, 5))
    _check_data_file("val_data", good)
    bad = tmp_path / f"bad.{ext}"
    bad.write_bytes(b"hello world\n" * 3)
    with pytest.raises(ValueError, match=rf"^val_data: cannot read {bad} as \w+: "):
        _check_data_file("val_data", bad)
    with pytest.raises(FileNotFoundError, match="^val_data: data file .* not found"):
        _check_data_file("val_data", tmp_path / f"missing.{ext}")


def test_warm_start_continues_from_the_init_model(tiny, reference_run) -> None:
    """init_model: the run starts from the saved weights, shifts and scales, not from scratch."""
    from mlsim.data import read

    init = reference_run / "model.pt"
    # lr at its floor and no EMA: one epoch barely moves the weights, so predictions must stay
    # those of the init model (a cold start would give a different, untrained model).
    cfg = load_config(
        _config(tiny, "warm", init_model=str(init), epochs=1, lr=1e-9, min_lr=0.0, ema_decay=0.0)
    )
    train(cfg, progress=False)
    test = list(read(tiny / "test.extxyz"))
    from mlsim.train import predict

    before = predict(load_model(init), test, 8)
    after = predict(load_model(tiny / "warm" / "model.pt"), test, 8)
    np.testing.assert_allclose(after["energy_pred"], before["energy_pred"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(after["forces_pred"], before["forces_pred"], rtol=0, atol=1e-4)
    cold = load_config(_config(tiny, "cold", epochs=1, lr=1e-9, min_lr=0.0, ema_decay=0.0))
    train(cold, progress=False)
    cold_pred = predict(load_model(tiny / "cold" / "model.pt"), test, 8)
    assert np.abs(cold_pred["energy_pred"] - before["energy_pred"]).max() > 1e-3
    # Another architecture cannot warm-start from it.
    other = _config(
        tiny,
        "warm_bad",
        init_model=str(init),
        model={"architecture": "painn", "hyperparameters": {"features": 16, "cutoff": 4.0}},
    )
    with pytest.raises(ValueError, match="init_model: .* warm starts need the same architecture"):
        train(load_config(other), progress=False)


# --- issue #15: a float64 run is saved in float64 ------------------------------------------------
def test_float64_training_exports_a_float64_model(tiny, reference_run) -> None:
    """dtype: float64 -> model.pt in float64: energies of the trained eager model to 1e-10, forces
    to central finite differences of its energy (which float32 weights could not meet)."""
    import copy

    from mlsim.models import compute_properties
    from mlsim.train import Callback
    from mlsim.train._batching import collate

    trained = {}

    class KeepFinalModel(Callback):
        def on_fit_end(self, trainer, summary) -> None:
            trained["model"] = copy.deepcopy(trainer.final_model)

    cfg = load_config(_config(tiny, "f64", dtype="float64", epochs=2))
    train(cfg, progress=False, callbacks=[KeepFinalModel()])
    model = load_model(tiny / "f64" / "model.pt")
    floats = [t for t in [*model.parameters(), *model.buffers()] if t.dtype.is_floating_point]
    assert floats and all(t.dtype == torch.float64 for t in floats)
    # A float32 run stays float32.
    assert next(load_model(reference_run / "model.pt").parameters()).dtype == torch.float32

    b = collate(read_structures(tiny / "test.extxyz"), torch.float64)
    energy = model(*b.inputs())
    assert energy.dtype == torch.float64
    eager = trained["model"]
    assert next(eager.parameters()).dtype == torch.float64
    torch.testing.assert_close(energy, eager(*b.inputs()).detach(), rtol=0, atol=1e-10)

    forces = compute_properties(model, *b.inputs(), forces=True)["forces"].detach()
    h = 1e-5
    for atom in range(5):  # every atom of the first structure, every component
        for k in range(3):
            shifted = []
            for sign in (1, -1):
                pos = b.positions.clone()
                pos[atom, k] += sign * h
                shifted.append(model(b.numbers, pos, b.cell, b.pbc, b.batch)[0].item())
            fd = -(shifted[0] - shifted[1]) / (2 * h)
            assert abs(forces[atom, k].item() - fd) < 1e-6, (atom, k, forces[atom, k].item(), fd)


def _old_names(state: dict) -> dict:
    """State-dict keys as models wrote them before the model blocks existed."""
    rename = {
        "element_index.species_map": "species_map",
        "atomic_shift.self_energy": "self_energy",
        "energy_scale.scale": "energy_scale",
        "rbf.freqs": "freqs",
    }
    out = {}
    for k, v in state.items():
        for new, old in rename.items():
            if k == new or k.endswith("." + new):
                k = k[: len(k) - len(new)] + old
                break
        out[k] = v
    return out


def test_checkpoint_with_pre_block_parameter_names_resumes(tiny, reference_run) -> None:
    """A checkpoint written before the model blocks (old key names) resumes to the same result."""
    cfg = load_config(_config(tiny, "oldnames"))
    train(cfg, progress=False, stop_after_epochs=2)
    ck_path = tiny / "oldnames" / "checkpoint.pt"
    ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    assert "element_index.species_map" in ck["model"]
    ck["model"] = _old_names(ck["model"])
    ck["ema"]["shadow"] = _old_names(ck["ema"]["shadow"])
    if ck["state"]["best_state"] is not None:
        ck["state"]["best_state"] = _old_names(ck["state"]["best_state"])
    torch.save(ck, ck_path)
    train(cfg, resume=True, progress=False)
    got, ref = _weights(ck_path), _weights(reference_run / "checkpoint.pt")
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
