"""Fault injection for data files: SIGKILL the labeller at random points, damage files on disk.

A killed `mlsim label` must resume to every structure labelled exactly once with the right labels;
a file that is not clean (flipped bytes, a truncated gzip stream, the wrong extension) must be
refused, naming the file, and left byte for byte as it was.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT

from mlsim.data import Dataset, Structure, label, read, write
from mlsim.data._io import _frame_text, read_frames_repairing
from mlsim.data._label import default_failed_path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class SlowEMT(EMT):
    """EMT taking a few milliseconds a call, so a kill at a random time lands inside labelling."""

    def calculate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.005)
        super().calculate(*args, **kwargs)


def _clusters(n: int, seed: int = 0) -> list[Structure]:
    rng = np.random.default_rng(seed)
    base = np.array(
        [[0, 0, 0], [2.55, 0, 0], [0, 2.55, 0], [0, 0, 2.55], [2.55, 2.55, 0]], dtype=float
    )
    return [
        Structure([29, 29, 79, 29, 28], base + rng.normal(0, 0.1, base.shape), info={"i": i})
        for i in range(n)
    ]


def _labels(path: Path) -> dict[int, Structure]:
    recs = read_frames_repairing(path)
    idx = [int(r.info["label_index"]) for r in recs]
    assert len(idx) == len(set(idx)), f"a structure was labelled twice: {sorted(idx)}"
    return dict(zip(idx, recs, strict=True))


def _check_labels(got: dict[int, Structure], inputs: list[Structure]) -> None:
    """Every record carries the EMT energy and forces of its own input structure."""
    for i, rec in got.items():
        atoms = inputs[i].to_atoms()
        atoms.calc = EMT()
        np.testing.assert_allclose(rec.positions, inputs[i].positions, atol=1e-7)
        assert rec.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-7), i
        np.testing.assert_allclose(rec.forces, atoms.get_forces(), atol=1e-7)
        assert rec.info["i"] == i and rec.info["method"] == "SlowEMT"


def _torn_append(out: Path, s: Structure, index: int, cut: float) -> None:
    """Append part of one more record, as a kill in the middle of `append_frames` would leave it."""
    s = Structure(s.numbers, s.positions, energy=1.0, forces=np.zeros((len(s), 3)))
    s.info.update({"label_index": index, "method": "SlowEMT"})
    data = _frame_text(s).encode()
    if out.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with open(out, "ab") as fh:
        fh.write(data[: max(1, int(len(data) * cut))])


@pytest.mark.parametrize("name", ["out.extxyz", "out.extxyz.gz"])
def test_sigkill_at_random_points_then_resume(tmp_path, name):
    n = 40
    inputs = _clusters(n, seed=4)
    inp = tmp_path / "in.extxyz"
    write(inp, inputs)
    out = tmp_path / name
    cmd = [sys.executable, "-m", "mlsim", "label", str(inp), "--method", "test_faults_data:SlowEMT"]
    cmd += ["--out", str(out), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    rng = np.random.default_rng(17)
    kills = 0
    for attempt in range(2):  # each kill at most 80 ms in: >= 100 ms of work is always left
        size = out.stat().st_size if out.exists() else 0
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        # Wait until it is labelling (the output grows), then kill at a random moment.
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.stat().st_size > size:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.08))
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if rc == 0:
            break  # finished before the kill: nothing left to test
        assert rc == -signal.SIGKILL, err
        kills += 1
        got = _labels(out)
        assert 0 < len(got) <= n  # n: killed after the last structure, before it exited
        _check_labels(got, inputs)
        missing = sorted(set(range(n)) - set(got))
        if attempt == 0 and missing:  # and once as if the kill had cut the last append short
            _torn_append(out, inputs[missing[0]], missing[0], rng.uniform(0.1, 0.9))
    assert kills == 2
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    final = _labels(out)
    assert sorted(final) == list(range(n))
    _check_labels(final, inputs)
    assert read(out, require_forces=True)  # and it is clean, strict-read extxyz now
    assert not default_failed_path(out).exists()


def _plain_output(tmp_path: Path, inputs: Dataset) -> Path:
    out = tmp_path / "o.extxyz"
    label(inputs, out, "ase.calculators.emt:EMT", progress=False)
    return out


def _member_output(tmp_path: Path, inputs: Dataset) -> Path:
    """An unfinished gzip output (--limit): one gzip member per frame."""
    out = tmp_path / "o.extxyz.gz"
    label(inputs, out, "ase.calculators.emt:EMT", progress=False, limit=len(inputs) - 2)
    return out


def _flip_text(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x80  # an ASCII byte becomes invalid UTF-8
    path.write_bytes(bytes(data))
    return r"frame \d+ \(byte \d+\): invalid byte 0x.. at byte \d+"


def _flip_member(path: Path) -> str:
    data = bytearray(path.read_bytes())
    starts = [k for k in range(len(data) - 2) if data[k : k + 3] == b"\x1f\x8b\x08"]
    mid = starts[len(starts) // 2]
    # one bit of the member's CRC32 (its last 8 bytes are CRC32 and size): always detected, where
    # a flip in the deflate data is only almost always detected
    data[starts[len(starts) // 2 + 1] - 6] ^= 0x01
    path.write_bytes(bytes(data))
    return rf"frame {len(starts) // 2} \(gzip member at byte {mid}\): corrupt gzip member"


def _truncate_stream(path: Path) -> str:
    """A finished (compacted, one-stream) output cut in half, e.g. by an interrupted copy."""
    data = path.read_bytes()
    assert data.count(b"\x1f\x8b\x08") == 1
    path.write_bytes(data[: len(data) // 2])
    return r"frame 0 \(gzip member at byte 0\): the file ends inside this frame"


def _rename(path: Path, new: str) -> Path:
    target = path.with_name(new)
    os.replace(path, target)
    return target


@pytest.mark.parametrize(
    "damage",
    ["flipped_text", "flipped_member", "truncated_gzip", "gzip_named_plain", "plain_named_gz"],
)
def test_damaged_files_are_refused_untouched(tmp_path, damage):
    inputs = Dataset(_clusters(12, seed=1))
    if damage == "flipped_text":
        out = _plain_output(tmp_path, inputs)
        match = _flip_text(out)
    elif damage == "flipped_member":
        out = _member_output(tmp_path, inputs)
        match = _flip_member(out)
    elif damage == "truncated_gzip":
        out = tmp_path / "o.extxyz.gz"
        label(inputs, out, "ase.calculators.emt:EMT", progress=False)
        match = _truncate_stream(out)
    elif damage == "gzip_named_plain":
        out = _rename(_member_output(tmp_path, inputs), "o.extxyz")
        match = r"frame 0 \(byte 0\): this is gzip-compressed data"
    else:
        out = _rename(_plain_output(tmp_path, inputs), "o.extxyz.gz")
        match = r"frame 0 \(gzip member at byte 0\): not gzip data"
    before = out.read_bytes()
    stamp = out.stat().st_mtime_ns
    name = out.name.replace(".", r"\.")
    with pytest.raises(ValueError, match=rf"{name}: {match}"):
        label(inputs, out, "ase.calculators.emt:EMT", progress=False)
    with pytest.raises(ValueError, match=rf"{name}: {match}"):
        read(out)
    # the same file as a labelling input, and through the command line
    from mlsim.cli import main

    assert main(["data", "info", str(out)]) == 1
    write(tmp_path / "in.extxyz", inputs)
    args = ["label", str(tmp_path / "in.extxyz"), "--method", "ase.calculators.emt:EMT"]
    assert main([*args, "--no-progress", "--out", str(out)]) == 1
    assert out.read_bytes() == before and out.stat().st_mtime_ns == stamp
    assert not default_failed_path(out).exists()
