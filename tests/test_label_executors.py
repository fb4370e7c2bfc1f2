"""Labelling executors: worker processes and Dask give the serial run's labels, survive dead workers.

Every test checks the output holds each input structure exactly once with the labels of an
uninterrupted serial run (EMT is deterministic, so "the same" means bit for bit).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT

from mlsim.data import Dataset, Structure, label, read, write
from mlsim.data._executors import ExecutorError
from mlsim.data._io import read_frames_repairing
from mlsim.data._label import default_failed_path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EMT_METHOD = "ase.calculators.emt:EMT"


class KillOnceEMT(EMT):
    """EMT whose process SIGKILLs itself inside its 3rd calculation, once per $MLSIM_TEST_KILL_ONCE file."""

    calls = 0

    def calculate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        KillOnceEMT.calls += 1
        marker = os.environ.get("MLSIM_TEST_KILL_ONCE")
        if marker and KillOnceEMT.calls == 3:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass  # another worker died already: this one calculates
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        super().calculate(*args, **kwargs)


class KillerEMT(EMT):
    """EMT whose process SIGKILLs itself on every structure whose first atom has x < -1 A."""

    def calculate(self, atoms=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        if atoms is not None and atoms.positions[0, 0] < -1.0:
            os.kill(os.getpid(), signal.SIGKILL)
        super().calculate(atoms, *args, **kwargs)


class SlowEMT(EMT):
    """EMT taking 40 ms a call, so a scheduler killed after a few results leaves work undone."""

    def calculate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.04)
        super().calculate(*args, **kwargs)


class ThreadProbe(EMT):
    """Energy = 1000 * OMP_NUM_THREADS + numpy's BLAS threads (+100 with MALLOC_TRIM_THRESHOLD_)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):  # type: ignore[no-untyped-def]
        from threadpoolctl import threadpool_info

        blas = [d["num_threads"] for d in threadpool_info() if "numpy" in d["filepath"]]
        omp = int(os.environ.get("OMP_NUM_THREADS", "0"))
        self.atoms = atoms.copy()
        trim = 100.0 * ("MALLOC_TRIM_THRESHOLD_" in os.environ)  # Dask's default: slows pyscf
        energy = 1000.0 * omp + blas[0] + trim
        self.results = {"energy": energy, "forces": np.zeros((len(atoms), 3))}


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, dict[int, Structure]]:
    """40 structures and their serial EMT labels."""
    inputs = Dataset(_clusters(40, seed=5))
    out = tmp_path_factory.mktemp("ref") / "ref.extxyz"
    label(inputs, out, EMT_METHOD, progress=False)
    return inputs, _labels(out)


def _assert_same(got: dict[int, Structure], ref: dict[int, Structure], skip=()) -> None:
    """The same structures with bit-identical labels and the same info (timings aside)."""
    assert sorted(got) == sorted(set(ref) - set(skip))
    for i, rec in got.items():
        assert rec.energy == ref[i].energy, i
        np.testing.assert_array_equal(rec.forces, ref[i].forces)
        np.testing.assert_array_equal(rec.positions, ref[i].positions)
        want = {k: v for k, v in ref[i].info.items() if k != "label_seconds"}
        assert {k: v for k, v in rec.info.items() if k != "label_seconds"} == want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_process_workers_match_serial(tmp_path, reference):
    inputs, ref = reference
    out = tmp_path / "o.extxyz.gz"
    summ = label(inputs, out, EMT_METHOD, progress=False, workers=2, limit=25)
    assert (summ.n_labelled, summ.n_failed) == (25, 0)
    # resumed by the serial path (records in any order), then compacted to one gzip stream
    assert label(inputs, out, EMT_METHOD, progress=False).n_labelled == 15
    assert out.read_bytes().count(b"\x1f\x8b\x08") == 1
    _assert_same(_labels(out), ref)


def test_dask_local_cluster_matches_serial(tmp_path, reference):
    pytest.importorskip("distributed")
    inputs, ref = reference
    out = tmp_path / "o.extxyz"
    before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "PYTHONHASHSEED")}
    summ = label(inputs, out, EMT_METHOD, progress=False, executor="dask", workers=2)
    assert (summ.n_labelled, summ.n_already) == (40, 0)
    _assert_same(_labels(out), ref)
    # the nannies set OMP_NUM_THREADS etc. in this process to spawn workers: put back
    assert {k: os.environ.get(k) for k in before} == before
    assert label(inputs, out, EMT_METHOD, progress=False, executor="dask").n_labelled == 0


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_worker_killed_mid_run_is_retried(tmp_path, reference, monkeypatch, executor):
    """A worker SIGKILLed inside a calculation: its chunk is labelled elsewhere, nothing twice."""
    if executor == "dask":
        pytest.importorskip("distributed")
    inputs, ref = reference
    marker = tmp_path / "killed"
    monkeypatch.setenv("MLSIM_TEST_KILL_ONCE", str(marker))
    out = tmp_path / "o.extxyz"
    method = "test_label_executors:KillOnceEMT"
    summ = label(inputs, out, method, progress=False, executor=executor, workers=2, chunk_size=3)
    assert marker.exists()  # a worker did die
    assert (summ.n_labelled, summ.n_failed) == (40, 0)
    got = _labels(out)
    assert {r.info["method"] for r in got.values()} == {"KillOnceEMT"}
    for r in got.values():
        r.info["method"] = "EMT"
    _assert_same(got, ref)
    assert not default_failed_path(out).exists()


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_structure_that_kills_its_worker_goes_to_failed_file(tmp_path, reference, executor):
    if executor == "dask":
        pytest.importorskip("distributed")
    inputs, ref = reference
    structures = _clusters(40, seed=5)
    structures[7].positions -= [3.0, 0, 0]
    out = tmp_path / "o.extxyz"
    method = "test_label_executors:KillerEMT"
    summ = label(
        Dataset(structures), out, method, progress=False, executor=executor, workers=2, chunk_size=4
    )
    assert (summ.n_labelled, summ.n_failed) == (39, 1)
    (bad,) = read_frames_repairing(summ.failed)
    assert int(bad.info["label_index"]) == 7
    reason = {
        "local": "the worker process died 2 times while labelling this structure",
        "dask": "the Dask workers running this structure died repeatedly (KilledWorker",
    }[executor]
    assert reason in bad.info["label_error"]
    got = _labels(out)
    for r in got.values():
        r.info["method"] = "EMT"
    _assert_same(got, ref, skip=[7])


def test_labelling_process_killed_then_resume(tmp_path):
    """SIGKILL `mlsim label --workers 2`: its workers go too, and a rerun completes the output."""
    psutil = pytest.importorskip("psutil")
    inputs = _clusters(30, seed=2)
    inp = tmp_path / "in.extxyz"
    write(inp, inputs)
    out = tmp_path / "o.extxyz.gz"
    cmd = [sys.executable, "-m", "mlsim", "label", str(inp), "--out", str(out), "--no-progress"]
    cmd += ["--method", "test_label_executors:SlowEMT", "--workers", "2", "--chunk-size", "2"]
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(_labels(out)) >= 3:
            break
        time.sleep(0.01)
    workers = psutil.Process(proc.pid).children()
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "worker processes outlived the labelling process"
    partial = _labels(out)
    assert 3 <= len(partial) < 30
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"{30 - len(partial)} labelled now" in res.stderr
    got = _labels(out)
    assert sorted(got) == list(range(30))
    ref = tmp_path / "ref.extxyz"
    label(read(inp), ref, EMT_METHOD, progress=False)
    for r in got.values():
        r.info["method"] = "EMT"
    _assert_same(got, _labels(ref))


class HungryEMT(EMT):
    """EMT that first allocates 2 GB for structures whose first atom has x < -1 A."""

    def calculate(self, atoms=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        if atoms is not None and atoms.positions[0, 0] < -1.0:
            np.ones(250_000_000).sum()
        super().calculate(atoms, *args, **kwargs)


def test_memory_limit_per_worker(tmp_path):
    structures = _clusters(6, seed=1)
    structures[4].positions -= [3.0, 0, 0]
    out = tmp_path / "o.extxyz"
    method = "test_label_executors:HungryEMT"
    summ = label(structures, out, method, progress=False, workers=2, memory_limit="600MB")
    assert (summ.n_labelled, summ.n_failed) == (5, 1)
    (bad,) = read_frames_repairing(summ.failed)
    assert int(bad.info["label_index"]) == 4
    assert bad.info["label_error"] == "out of memory (memory limit 0.6 GB per worker)"


def test_labeller_object_is_sent_to_workers(tmp_path, reference):
    from mlsim.data._backends import AseLabeller

    inputs, ref = reference
    out = tmp_path / "o.extxyz"
    label(inputs, out, AseLabeller(EMT(), "EMT"), progress=False, workers=2, limit=8)
    _assert_same(_labels(out), {i: ref[i] for i in range(8)})
    # one that cannot travel is refused before any file is made
    unpicklable = AseLabeller(EMT(), "EMT")
    unpicklable.hook = lambda: None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="'EMT' cannot be sent to worker processes"):
        label(inputs, tmp_path / "u.extxyz", unpicklable, progress=False, workers=2)
    assert not (tmp_path / "u.extxyz").exists()


_CLUSTER_SCRIPT = """
import sys, time
from dask.distributed import LocalCluster
if __name__ == "__main__":
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
    print(cluster.scheduler_address, flush=True)
    time.sleep(300)
"""


def test_scheduler_lost_mid_run_then_resume(tmp_path, reference):
    """The scheduler (and its workers) SIGKILLed: a clear error, the output intact, a rerun finishes."""
    pytest.importorskip("distributed")
    inputs, ref = reference
    script = tmp_path / "cluster.py"
    script.write_text(_CLUSTER_SCRIPT)
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: scheduler and workers die together
    )
    out = tmp_path / "o.extxyz"
    try:
        address = proc.stdout.readline().strip() if proc.stdout else ""
        assert address.startswith("tcp://"), address

        def kill_when_labelling() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(_labels(out) if out.exists() else {}) < 4:
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_when_labelling, daemon=True)
        killer.start()
        method = "test_label_executors:SlowEMT"
        t0 = time.monotonic()
        with pytest.raises(ExecutorError) as err:
            label(inputs, out, method, progress=False, scheduler=address, chunk_size=1)
        killer.join()
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    msg = str(err.value)
    assert f"lost the connection to the Dask scheduler at {address}" in msg
    assert "run the same command again to resume" in msg
    partial = _labels(out)
    assert 4 <= len(partial) < 40
    assert read(out, require_forces=True)  # clean extxyz: nothing torn, nothing twice
    summ = label(inputs, out, method, progress=False, workers=2)
    assert (summ.n_already, summ.n_labelled) == (len(partial), 40 - len(partial))
    got = _labels(out)
    for r in got.values():
        r.info["method"] = "EMT"
    _assert_same(got, ref)


def test_bad_scheduler_address_fails_fast(tmp_path, capsys):
    pytest.importorskip("distributed")
    inputs = Dataset(_clusters(3))
    address = f"tcp://127.0.0.1:{_free_port()}"
    out = tmp_path / "o.extxyz"
    t0 = time.monotonic()
    with pytest.raises(
        ExecutorError, match=rf"cannot connect to the Dask scheduler at '{address}'"
    ):
        label(inputs, out, EMT_METHOD, progress=False, scheduler=address, scheduler_timeout=2)
    assert time.monotonic() - t0 < 10
    assert not out.exists()  # no empty output left behind
    # the command line: one line, exit status 1
    from mlsim.cli import main

    write(tmp_path / "in.extxyz", inputs)
    args = ["label", str(tmp_path / "in.extxyz"), "--method", EMT_METHOD, "--out", str(out)]
    assert (
        main([*args, "--no-progress", "--scheduler", "nonsense://x", "--scheduler-timeout", "2"])
        == 1
    )
    assert "mlsim label: error: cannot connect to the Dask scheduler at 'nonsense://x'" in (
        capsys.readouterr().err
    )
    assert not out.exists()


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_threads_per_worker_reach_the_workers(tmp_path, monkeypatch, executor):
    """Workers see OMP_NUM_THREADS and BLAS threads = threads; this process's settings stay."""
    if executor == "dask":
        pytest.importorskip("distributed")
    inputs = Dataset(_clusters(4))
    out = tmp_path / "o.extxyz"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # a user's setting: not what the workers get
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    method = "test_label_executors:ThreadProbe"
    label(inputs, out, method, progress=False, executor=executor, workers=2, threads=2)
    assert {r.energy for r in read(out)} == {2002.0}
    assert os.environ.get("OMP_NUM_THREADS") == "7"


def test_option_errors(tmp_path):
    inputs = Dataset(_clusters(2))
    out = tmp_path / "o.extxyz"
    cases = [
        ({"executor": "slurm"}, "unknown executor 'slurm': use local or dask"),
        ({"workers": 0}, "workers must be an integer >= 1, got 0"),
        ({"scheduler": "tcp://h:1", "executor": "local"}, "needs the dask executor"),
        ({"scheduler": "tcp://h:1", "workers": 2}, r"set by the cluster at tcp://h:1"),
        ({"memory_limit": "lots"}, "memory limit 'lots': use bytes or a size like 4GB"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            label(inputs, out, EMT_METHOD, progress=False, **kwargs)
    assert not out.exists()


def test_cli_workers_match_serial(tmp_path, reference):
    from mlsim.cli import main

    inputs, _ = reference
    inp = tmp_path / "in.extxyz"
    write(inp, inputs)  # positions as the file stores them: the reference is labelled from it too
    args = ["label", str(inp), "--method", EMT_METHOD, "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "serial.extxyz")]) == 0
    out = tmp_path / "o.extxyz"
    assert main([*args, "--workers", "2", "--threads", "1", "--out", str(out)]) == 0
    _assert_same(_labels(out), _labels(tmp_path / "serial.extxyz"))


def _job_script_in_docs() -> str:
    text = (ROOT / "examples" / "cluster" / "README.md").read_text()
    blocks = re.findall(r"```bash\n(#!/usr/bin/env bash\n.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "README.md shows one job script"
    return blocks[0]


def test_slurm_job_script_is_what_the_docs_show():
    """dask-jobqueue writes the job script without SLURM; the example's config must give the docs' one."""
    pytest.importorskip("dask_jobqueue")
    path = ROOT / "examples" / "cluster" / "start_cluster.py"
    spec = importlib.util.spec_from_file_location("start_cluster", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # port 0: the example's fixed 8786 may be taken here; the docs show it as SCHEDULER_IP:8786
    cluster = mod.make_cluster(mod.DEFAULT_CONFIG, scheduler_options={"port": 0})
    try:
        script = cluster.job_script().replace(cluster.scheduler_address, "tcp://SCHEDULER_IP:8786")
    finally:
        cluster.close()
    assert script == _job_script_in_docs()


def test_cluster_readme_commands_parse():
    import shlex

    from mlsim.cli import build_parser

    text = (ROOT / "examples" / "cluster" / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += re.sub(r"\\\n\s*", "", block).splitlines()  # join continued lines
    cmds = [ln.split("  #")[0].strip() for ln in lines if ln.strip().startswith("mlsim ")]
    assert len(cmds) == 3
    for cmd in cmds:
        args = build_parser().parse_args(shlex.split(cmd)[1:])
        assert args.command == "label", cmd


def test_xtb_labels_do_not_depend_on_what_the_worker_labelled_before(tmp_path):
    """tblite restarts its SCC from the previous result: each structure must start fresh, so the
    same structure gets bit-identical xTB labels in any order, chunking or worker."""
    pytest.importorskip("tblite")
    from mlsim.data import ethanol_path, read

    inputs = list(read(ethanol_path("val", "geometries")))[:8]
    forward, backward = tmp_path / "f.extxyz", tmp_path / "b.extxyz"
    label(Dataset(inputs), forward, "xtb", progress=False)
    label(Dataset(inputs[::-1]), backward, "xtb", progress=False)
    f, b = _labels(forward), _labels(backward)
    n = len(inputs)
    for i in range(n):
        assert f[i].energy == b[n - 1 - i].energy, i
        np.testing.assert_array_equal(f[i].forces, b[n - 1 - i].forces)
