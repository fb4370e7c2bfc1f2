"""The Trainer and its callbacks (issue #15), and the packed per-rank data reading (issue #18).

Runs the tiny EMT training of tests/test_train.py (24 structures, 4 epochs, 1 thread).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlsim.data import Structure, write
from mlsim.models import load_metadata
from mlsim.train import Callback, Trainer, default_callbacks, load_config, predict, train
from mlsim.train._batching import PackedStructures, collate
from mlsim.train._data import _pack_file
from mlsim.train._evaluate import predict_share

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train  # noqa: E402 - its tiny data set, configs and reference run are reused here

tiny = test_train.tiny  # fixtures
reference_run = test_train.reference_run
_config, _weights = test_train._config, test_train._weights
PYTHON = sys.executable


class Recorder(Callback):
    """Records every hook call; adds a key to the summary at the end."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def setup(self, trainer) -> None:
        self.calls.append("setup")

    def on_fit_start(self, trainer) -> None:
        self.calls.append("fit_start")

    def on_epoch_start(self, trainer) -> None:
        self.calls.append(f"epoch_start {trainer.state['epoch']}")

    def on_batch_end(self, trainer, loss) -> None:
        assert np.isfinite(loss) and loss > 0
        self.calls.append("batch")

    def on_evaluation_copy(self, trainer, model) -> None:
        assert model is not trainer.model
        self.calls.append("eval_copy")

    def on_epoch_end(self, trainer, row) -> None:
        assert row is trainer.state["history"][-1]
        self.calls.append(f"epoch_end {row['epoch']}")

    def on_fit_end(self, trainer, summary) -> None:
        summary["recorded_epochs"] = len(trainer.state["history"])
        self.calls.append("fit_end")

    def teardown(self, trainer) -> None:
        self.calls.append("teardown")


def test_hooks_run_in_order_and_extend_the_summary(tiny) -> None:
    """setup, fit start, per epoch (batches, validation copy, epoch end), final copy, fit end, teardown."""
    rec = Recorder()
    summary = train(load_config(_config(tiny, "hooks", epochs=2)), progress=False, callbacks=[rec])
    batches = ["batch"] * 3  # 20 training structures, batches of 8
    epoch = [*batches, "eval_copy"]
    assert rec.calls == [
        "setup",
        "fit_start",
        "epoch_start 0",
        *epoch,
        "epoch_end 1",
        "epoch_start 1",
        *epoch,
        "epoch_end 2",
        "eval_copy",  # the final model (best weights)
        "fit_end",
        "teardown",
    ]
    out = tiny / "hooks"
    # What on_fit_end added is saved: summary.json and the model's metadata.
    assert summary["recorded_epochs"] == 2
    assert json.loads((out / "summary.json").read_text())["recorded_epochs"] == 2
    assert load_metadata(out / "model.pt")["training"]["recorded_epochs"] == 2
    assert not (out / ".packed").exists()  # the packed data is removed at the end


class BatchCounter(Callback):
    """A callback with state: batches seen over the whole run, kept across --resume."""

    state_key = "batch_counter"

    def __init__(self) -> None:
        self.count = 0

    def on_batch_end(self, trainer, loss) -> None:
        self.count += 1

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def test_callback_state_is_checkpointed_and_restored(tiny, reference_run) -> None:
    """state_key: the state goes into checkpoint.pt and comes back on resume; the run is unchanged."""
    cfg = load_config(_config(tiny, "counted"))
    first = BatchCounter()
    assert train(cfg, progress=False, stop_after_epochs=1, callbacks=[first])["stopped"]
    ckpt = tiny / "counted" / "checkpoint.pt"
    assert torch.load(ckpt, weights_only=False)["batch_counter"] == {"count": 3}
    second = BatchCounter()
    train(cfg, resume=True, progress=False, callbacks=[second])
    assert second.count == 12  # 3 restored + 3 epochs x 3 batches
    a, b = _weights(reference_run / "checkpoint.pt"), _weights(ckpt)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_state_key_the_checkpoint_uses_is_refused(tiny) -> None:
    """A callback cannot overwrite the trainer's own checkpoint entries."""

    class Bad(Callback):
        state_key = "model"

    with pytest.raises(ValueError, match=r"callback state_key \['model'\] is taken"):
        train(load_config(_config(tiny, "badkey")), progress=False, callbacks=[Bad()])


def test_interrupt_from_a_callback_then_resume_equals_an_uninterrupted_run(
    tiny, reference_run
) -> None:
    """trainer.interrupt() (e.g. a batch job's deadline): no model.pt, and --resume continues exactly."""

    class Deadline(Callback):
        def on_epoch_end(self, trainer, row) -> None:
            if row["epoch"] == 3:
                trainer.interrupt()

    cfg = load_config(_config(tiny, "deadline"))
    assert train(cfg, progress=False, callbacks=[Deadline()]) == {
        "stopped": "interrupted",
        "epoch": 3,
    }
    assert not (tiny / "deadline" / "model.pt").exists()
    summary = train(cfg, resume=True, progress=False)
    assert summary["epochs"] == 4 and summary["stop_reason"] == "epochs"
    a, b = _weights(reference_run / "checkpoint.pt"), _weights(tiny / "deadline" / "checkpoint.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref = json.loads((reference_run / "summary.json").read_text())
    assert summary["test"] == ref["test"]


def test_stop_from_a_callback_finishes_the_run_normally(tiny) -> None:
    """trainer.stop(reason): final evaluation and export happen; the reason is in the summary."""

    class Target(Callback):
        def on_epoch_end(self, trainer, row) -> None:
            if row["epoch"] == 2:
                trainer.stop("target_reached")

    summary = train(load_config(_config(tiny, "target")), progress=False, callbacks=[Target()])
    assert summary["stop_reason"] == "target_reached" and summary["epochs"] == 2
    assert (tiny / "target" / "model.pt").is_file()
    assert json.loads((tiny / "target" / "summary.json").read_text())["stop_reason"] == (
        "target_reached"
    )


def test_trainer_runs_with_its_default_callbacks_like_train(tiny, reference_run) -> None:
    """Trainer(cfg, default_callbacks(cfg)).fit() is what train() does."""
    cfg = load_config(_config(tiny, "direct"))
    summary = Trainer(cfg, default_callbacks(cfg, progress=False), progress=False).fit()
    ref = json.loads((reference_run / "summary.json").read_text())
    assert summary["test"] == ref["test"] and summary["val"] == ref["val"]


# --- packed data (issue #18) -----------------------------------------------------------------------
def _periodic(n: int, seed: int) -> list[Structure]:
    """Rattled fcc Cu cells (periodic, with cells) labelled with EMT."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        out.append(Structure.from_atoms(atoms))
        out[-1].energy = atoms.get_potential_energy()
        out[-1].forces = atoms.get_forces()
    return out


@pytest.mark.parametrize("ext", ["extxyz", "extxyz.gz", "npz", "db"])
@pytest.mark.parametrize("periodic", [False, True])
def test_packed_batches_equal_batches_of_the_structures(tmp_path, ext, periodic) -> None:
    """Every format, streamed into packed files, gives the batches and labels of mlsim.data.read."""
    from mlsim.train._data import read_structures

    path = tmp_path / f"s.{ext}"
    write(path, _periodic(6, 1) if periodic else test_train._emt_structures(6, 4))
    structures = read_structures(path)  # the reference reader (text formats round values)
    packed = _pack_file("data", path, tmp_path / "packed")
    assert len(packed) == 6
    idx = [4, 0, 5, 2]
    for dtype in (torch.float32, torch.float64):
        got = packed.batch(idx, dtype)
        want = collate([structures[i] for i in idx], dtype)
        for field in want.__dataclass_fields__:
            a, b = getattr(got, field), getattr(want, field)
            assert a.dtype == b.dtype and torch.equal(a, b), (field, dtype)
    view = packed.subset([5, 1, 3])
    want_forces = np.concatenate([structures[5].forces, structures[3].forces])
    np.testing.assert_array_equal(view.reference_forces([0, 2]), want_forces)
    for lab, s in zip(packed.labels([3, 1]), [structures[3], structures[1]]):
        assert lab.energy == s.energy
        np.testing.assert_array_equal(lab.forces, s.forces)
        np.testing.assert_array_equal(lab.numbers, s.numbers)


def test_packing_an_unusual_extxyz_falls_back_to_the_strict_reader(tmp_path) -> None:
    """A file the fast stream does not handle is read by mlsim.data.read: accepted or named exactly."""
    from mlsim.train._data import read_structures

    good = tmp_path / "nonewline.extxyz"
    write(good, test_train._emt_structures(3, 6))
    good.write_text(good.read_text().rstrip("\n"))  # the last line lacks its newline: still fine
    structures = read_structures(good)
    packed = _pack_file("data", good, tmp_path / "p1")
    want = collate([structures[2]], torch.float64).positions
    assert len(packed) == 3 and torch.equal(packed.batch([2], torch.float64).positions, want)
    bad = tmp_path / "cut.extxyz"
    write(bad, structures)
    assert len(_pack_file("val_data", bad, tmp_path / "p3")) == 3  # intact: the fast stream
    text = bad.read_text()
    bad.write_text(text[: len(text) - 60])  # the last frame is cut short
    with pytest.raises(ValueError, match=r"^val_data: .*cut.extxyz: frame 2 \(byte \d+\)"):
        _pack_file("val_data", bad, tmp_path / "p2")
    assert not (tmp_path / "p2" / "positions.bin").exists()  # nothing half-written


def test_sharded_prediction_sums_to_the_full_prediction(tiny, reference_run) -> None:
    """Validation under torchrun: each rank predicts every world-th batch; the sum is predict()."""
    from mlsim.models._io import load_trainable
    from mlsim.train._data import read_structures

    # The eager model: TorchScript's profiling executor may change float results between calls.
    model = load_trainable(reference_run / "model.pt")[0]
    structures = read_structures(tiny / "test.extxyz")
    data = PackedStructures.from_structures(structures)
    full = predict(model, structures, batch_size=3)
    parts = [predict_share(model, data, 3, rank=r, world=2) for r in (0, 1)]
    for k in ("energy_pred", "forces_pred", "forces_ref"):
        assert np.array_equal(parts[0][k] + parts[1][k], full[k]), k
        assert not np.array_equal(parts[0][k], full[k]), k  # rank 0 alone has only its batches


_RANK_SCRIPT = """
import json, os, sys
import mlsim.data, mlsim.train._data as td
from mlsim.train import Callback, load_config, train

rank = int(os.environ["RANK"])
if rank != 0:  # only rank 0 may read the data files
    def refuse(*args, **kwargs):
        raise AssertionError(f"rank {rank} read a data file")
    mlsim.data.read = refuse
    td._extxyz_frames = refuse

class Rows(Callback):
    def on_fit_start(self, trainer):
        self.rows, train = [], trainer.data.train
        batch = train.batch
        def recording(idx, dtype):
            self.rows[-1].extend(int(i) for i in idx)
            return batch(idx, dtype)
        train.batch = recording
    def on_epoch_start(self, trainer):
        self.rows.append([])
    def on_fit_end(self, trainer, summary):
        with open(os.path.join(sys.argv[2], f"rows{rank}.json"), "w") as fh:
            json.dump(self.rows, fh)

train(load_config(sys.argv[1]), progress=False, callbacks=[Rows()])
"""


def test_torchrun_ranks_read_only_their_own_structures(tiny, tmp_path) -> None:
    """Under torchrun only rank 0 reads the data file; each rank packs only its share of each batch."""
    script = tmp_path / "rows.py"
    script.write_text(_RANK_SCRIPT)
    cfg = _config(tiny, "rows", epochs=2, data="train.npz")
    write(tiny / "train.npz", test_train._emt_structures(24, 0))
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={test_train._free_port()}",
        str(script),
        str(cfg),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tiny)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rows{r}.json").read_text()) for r in (0, 1)]
    for epoch in range(2):
        mine, theirs = rows[0][epoch], rows[1][epoch]
        assert len(mine) == len(theirs) == 10  # 20 training structures, half each
        assert sorted(mine + theirs) == list(range(20))  # disjoint, together the training set
