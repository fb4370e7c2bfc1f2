"""Fault injection for `mlsim train`: SIGKILL at a random point, a truncated checkpoint, disk full.

Each test runs the tiny EMT training of tests/test_train.py (24 structures, 4 epochs, 1 thread);
the subprocess tests take a few seconds, mostly Python and torch start-up.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlsim.cli import main
from mlsim.train import load_config, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train  # noqa: E402 - its tiny data set, configs and reference run are reused here

tiny = test_train.tiny  # fixtures
reference_run = test_train.reference_run
_config, _weights = test_train._config, test_train._weights

PYTHON = sys.executable


def _mlsim_train(*args: str, **kwargs) -> subprocess.Popen:
    """`python -m mlsim train ARGS --no-progress` in a subprocess (stdout/stderr captured)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [PYTHON, "-m", "mlsim", "train", *args, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def _log_rows(path: Path) -> list[list[str]]:
    """log.csv rows without the wall-time column (the only field allowed to differ)."""
    if not path.exists():
        return []
    rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line]
    return [r[:1] + r[2:] for r in rows]


def _temp_files(folder: Path) -> list[str]:
    """Temporary files of mlsim's atomic writer left in `folder` (there must be none)."""
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_sigkill_at_a_random_point_then_resume_matches_an_uninterrupted_run(
    tiny, reference_run
) -> None:
    """Kill -9 during training (or while writing), --resume: same weights and log as no crash."""
    seed = int(os.environ.get("MLSIM_FAULT_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    why = f"MLSIM_FAULT_SEED={seed}"
    cfg = _config(tiny, "killed")
    out = tiny / "killed"
    # A random epoch to wait for (4 = the final model export), then a random extra delay.
    wait_rows, delay = rng.randint(1, 4), rng.uniform(0.0, 0.08)
    proc = _mlsim_train(str(cfg), cwd=tiny)
    deadline = time.monotonic() + 120
    while len(_log_rows(out / "log.csv")) < wait_rows and proc.poll() is None:
        assert time.monotonic() < deadline, why
        time.sleep(0.002)
    time.sleep(delay)
    killed = proc.poll() is None
    proc.kill()  # SIGKILL: no cleanup handler runs
    proc.communicate()
    resume = (out / "checkpoint.pt").exists()
    print(f"{why}: waited for {wait_rows} epochs + {delay:.3f} s, killed={killed}, resume={resume}")
    if not resume:  # killed before the first checkpoint: a fresh start must work
        assert killed, why
    got = train(load_config(cfg), resume=resume, progress=False)
    a, b = _weights(reference_run / "checkpoint.pt"), _weights(out / "checkpoint.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), (why, k)
    assert _log_rows(out / "log.csv") == _log_rows(reference_run / "log.csv"), why
    ref = json.loads((reference_run / "summary.json").read_text())
    assert got["test"] == ref["test"] and got["val"] == ref["val"], why
    assert got["epochs"] == 4 and got["stop_reason"] == "epochs", why
    assert json.loads((out / "summary.json").read_text())["test"] == ref["test"], why


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_truncated_checkpoint_on_resume_is_a_clear_error(tiny, capsys, damage) -> None:
    """A damaged checkpoint.pt: exit 1 with a message naming it and what to do (no Errno 22)."""
    name = f"trunc_{damage}"
    cfg_path = _config(tiny, name)
    train(load_config(cfg_path), progress=False, stop_after_epochs=1)
    ckpt = tiny / name / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00garbage" * 64}[damage]
    )
    capsys.readouterr()
    assert main(["train", str(cfg_path), "--resume", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"the checkpoint {ckpt}" in err, err
    assert "is truncated or corrupt and cannot be resumed" in err, err
    assert f"delete it (rm {ckpt}) to restart training from scratch" in err, err
    assert "Traceback" not in err


def _limit_file_size(limit: int):
    """preexec_fn: files may grow to `limit` bytes; SIGXFSZ ignored, so writes fail with EFBIG."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ignored dispositions survive exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_while_checkpointing_stops_clearly_and_keeps_the_old_checkpoint(tiny) -> None:
    """A write that fails (EFBIG, like ENOSPC): exit 1, clear message, old checkpoint intact."""
    cfg_path = _config(tiny, "full")
    train(load_config(cfg_path), progress=False, stop_after_epochs=1)
    out = tiny / "full"
    ckpt = out / "checkpoint.pt"
    before = ckpt.read_bytes()
    # The next checkpoint is a little larger than this one; the small logs still fit.
    proc = _mlsim_train(
        str(cfg_path), "--resume", cwd=tiny, preexec_fn=_limit_file_size(len(before) // 2)
    )
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-3000:]
    assert f"mlsim train: error: cannot write the checkpoint {ckpt}: File too large" in stderr
    assert f"the previous checkpoint {ckpt} (epoch 1) is intact" in stderr, stderr
    assert "continue with --resume" in stderr and "Traceback" not in stderr, stderr
    assert ckpt.read_bytes() == before  # untouched, and still a valid checkpoint
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert ck["state"]["epoch"] == 1
    assert _temp_files(out) == []  # no half-written checkpoint left behind
    assert not (out / "model.pt").exists()
    # With the space back, --resume finishes the run.
    assert train(load_config(cfg_path), resume=True, progress=False)["epochs"] == 4
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["state"]["epoch"] == 4
