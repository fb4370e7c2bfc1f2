"""Resumable labelling: every input structure gets a reference energy and forces exactly once.

Results are appended to OUT as they finish (one write + fsync per structure), each tagged with its
input position in info["label_index"] and the method settings (method, charge, spin, functional,
basis, density_fit: what applies). A restarted run reads OUT (and the failed file), checks the
existing records belong to this input and were made with the same settings, only then cuts off a
torn last frame a kill may have left, and labels only what is missing. Any other damage, or a file
that is not mlsim label output, is refused and left byte for byte as it is. Structures whose SCF
fails go to a separate failed file with the reason, are reported, and are not retried unless asked.

The labelling itself runs in this process (the default), in worker processes on this machine
(`workers=N`) or on a Dask cluster (`executor="dask"`, see mlsim.data._executors); results come
back in any order and only this process writes OUT and the failed file, so the output holds the
same frames with the same labels whatever runs them, and resuming works the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsim.data._backends import LabelFailure, Labeller, make_labeller
from mlsim.data._dataset import Dataset
from mlsim.data._executors import (
    DaskExecutor,
    ExecutorError,
    LabelExecutor,
    LabellerSpec,
    LocalExecutor,
    SerialExecutor,
    default_threads,
    parse_memory,
)
from mlsim.data._extxyz import cut_torn_tail, read_own_frames
from mlsim.data._io import append_frames, format_of, read, read_frames_repairing
from mlsim.data._structure import Structure

__all__ = ["EXECUTORS", "EXECUTOR_OPTIONS", "LabelSummary", "default_failed_path", "label"]

EXECUTORS = ("local", "dask")
# label() keyword arguments that choose where labelling runs (not part of the method settings).
EXECUTOR_OPTIONS = (
    "executor",
    "workers",
    "scheduler",
    "memory_limit",
    "chunk_size",
    "scheduler_timeout",
)

INDEX_KEY = "label_index"
# Keys a previous labelling left in an input's info: stale for this run's labels, so dropped.
_LABEL_KEYS = (
    INDEX_KEY,
    "method",
    "program",
    "functional",
    "basis",
    "density_fit",
    "scf_newton",
    "label_seconds",
    "label_error",
)
_CASELESS = ("functional", "basis")  # pyscf reads B3LYP and b3lyp alike


@dataclass
class LabelSummary:
    """What a label() call did."""

    n_inputs: int  # structures considered (after `limit`)
    n_already: int  # labelled or failed before this call
    n_labelled: int  # newly labelled by this call
    n_failed: int  # newly failed in this call
    out: Path
    failed: Path


def default_failed_path(out: str | Path) -> Path:
    """OUT.extxyz[.gz] -> OUT.failed.extxyz[.gz]: where structures that could not be labelled go."""
    out = Path(out)
    name = out.name
    gz = name.lower().endswith(".gz")
    stem = name[:-3] if gz else name
    base, ext = os.path.splitext(stem)
    return out.with_name(f"{base}.failed{ext}{'.gz' if gz else ''}")


def _settings_of(labeller: Labeller) -> dict[str, object]:
    """The settings stored with every label and checked on resume (at least the method name)."""
    settings = dict(getattr(labeller, "settings", None) or {})
    settings.setdefault("method", labeller.name)
    return settings


def _same_setting(key: str, got: object, want: object) -> bool:
    """Compare a stored setting (as read back from extxyz) with this run's."""
    if isinstance(want, bool):
        return isinstance(got, (bool, np.bool_)) and bool(got) == want
    if isinstance(want, int):
        return (
            isinstance(got, (int, np.integer))
            and not isinstance(got, (bool, np.bool_))
            and (int(got) == want)
        )
    if key in _CASELESS:
        return str(got).lower() == str(want).lower()
    return str(got) == str(want)


def _check_existing(
    records: list[Structure], inputs: Dataset, where: Path, settings: dict[str, object]
) -> set[int]:
    """Return the input indices already in `records`, after checking they match this input and settings.

    Records from older mlsim versions lack some settings keys; only the keys a record has are
    compared, so their labels still resume when what they do record matches.
    """
    done: set[int] = set()
    for k, r in enumerate(records):
        if INDEX_KEY not in r.info:
            raise ValueError(
                f"{where}: record {k} has no {INDEX_KEY}; not written by mlsim label, so it is "
                "left as it is: choose another output file"
            )
        i = int(r.info[INDEX_KEY])
        if i in done:
            raise ValueError(f"{where}: input structure {i} appears twice")
        if not 0 <= i < len(inputs):
            raise ValueError(
                f"{where}: record {k} refers to input {i}, beyond the {len(inputs)} inputs"
            )
        for key, want in settings.items():
            got = r.info.get(key)
            got = got.item() if isinstance(got, np.generic) else got  # np.int64(0) -> 0
            if key in r.info and not _same_setting(key, got, want):
                raise ValueError(
                    f"{where}: {key} differs: the file was labelled with {got!r}, this "
                    f"run uses {want!r} (record {k}); resume with the same settings or choose "
                    "another output file"
                )
        src = inputs[i]
        if len(src) != len(r) or not np.allclose(src.positions, r.positions, atol=1e-5):
            raise ValueError(
                f"{where}: record {k} does not match input structure {i}; wrong input file?"
            )
        done.add(i)
    return done


def _record(src: Structure, index: int) -> Structure:
    """The record to label for input `index`: its geometry and info, without stale label keys."""
    info = {k: v for k, v in src.info.items() if k not in _LABEL_KEYS}
    info[INDEX_KEY] = index
    return Structure(
        numbers=src.numbers, positions=src.positions, cell=src.cell, pbc=src.pbc, info=info
    )


def _positive_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _executor(
    method: str | Labeller,
    labeller: Labeller,
    method_options: dict[str, object],
    *,
    executor: str | None,
    workers: int | None,
    scheduler: str | None,
    memory_limit: int | str | None,
    chunk_size: int | None,
    scheduler_timeout: float,
) -> LabelExecutor:
    """Check the executor options and return the (not yet started) executor they describe."""
    kind = executor if executor is not None else ("dask" if scheduler else "local")
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}: use {' or '.join(EXECUTORS)}")
    workers = _positive_int("workers", workers)
    chunk_size = _positive_int("chunk_size", chunk_size)
    threads = _positive_int("threads", method_options.get("threads"))
    memory = parse_memory(memory_limit)
    if not scheduler_timeout > 0:
        raise ValueError(f"scheduler_timeout must be > 0 seconds, got {scheduler_timeout!r}")
    if scheduler and kind != "dask":
        raise ValueError(f"a scheduler address ({scheduler}) needs the dask executor")
    if scheduler and (workers is not None or memory is not None):
        raise ValueError(
            f"workers and memory_limit are set by the cluster at {scheduler}, not here (they "
            "apply to the local executor and to a LocalCluster started without an address)"
        )
    if kind == "local" and (workers or 1) == 1 and memory is None:
        return SerialExecutor(labeller, threads)
    if not scheduler:
        # Workers on this machine share its cores: a LocalCluster gets cores / threads workers
        # by default, and without a thread count the cores are divided among the workers.
        if workers is None:
            workers = 1 if kind == "local" else default_threads(threads or 1)
        threads = threads or default_threads(workers)
    if isinstance(method, str):
        target: str | Labeller = method
        options = dict(method_options)
        if threads is not None:
            options["threads"] = threads
    else:
        target, options = labeller, {}
        _check_picklable(labeller, cloud=kind == "dask")
    spec = LabellerSpec(target, options, threads=threads, memory_bytes=memory)
    if kind == "local":
        return LocalExecutor(spec, workers or 1, memory_bytes=memory, chunk_size=chunk_size)
    return DaskExecutor(
        spec,
        scheduler=scheduler,
        workers=workers,
        memory_bytes=memory,
        chunk_size=chunk_size,
        timeout=scheduler_timeout,
    )


def _check_picklable(labeller: Labeller, cloud: bool) -> None:
    """A Labeller object is sent to the workers as it is: say so now if it cannot travel."""
    import pickle

    dumps = pickle.dumps
    if cloud:  # Dask falls back to cloudpickle, which also takes lambdas and local classes
        try:
            from cloudpickle import dumps
        except ImportError:
            return  # no dask either: starting the executor says so
    try:
        dumps(labeller)
    except Exception as exc:
        raise ValueError(
            f"the labeller {labeller.name!r} cannot be sent to worker processes ({exc}); pass "
            "the method as a string (dft, xtb, module:Class) with its options instead"
        ) from exc


def _compact(path: Path) -> None:
    """Rewrite a finished one-gzip-member-per-frame file as one stream (about half the size)."""
    from mlsim.data._io import write

    write(path, read_frames_repairing(path))


def label(
    inputs: str | Path | Dataset | Sequence[Structure],
    out: str | Path,
    method: str | Labeller = "xtb",
    *,
    failed: str | Path | None = None,
    limit: int | None = None,
    retry_failed: bool = False,
    shuffle: int | None = None,
    progress: bool = True,
    executor: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    memory_limit: int | str | None = None,
    chunk_size: int | None = None,
    scheduler_timeout: float = 10.0,
    **method_options: object,
) -> LabelSummary:
    """Label every input structure with `method` into OUT (.extxyz or .extxyz.gz), resuming a previous run.

    `method` is 'dft' (pyscf), 'xtb' (tblite GFN2-xTB), 'module:Class' (an ASE calculator) or a
    Labeller object; `method_options` go to `make_labeller` (functional, basis, density_fit, charge,
    spin, threads). `limit` labels only the first `limit` inputs (raise it later to continue).
    With `shuffle=SEED` the inputs are taken in a seeded random order (and `limit` counts in that
    order), so a run cut short still covers the whole input evenly, e.g. every temperature.
    Resuming needs the same settings (method, charge, spin, functional, basis, density_fit: what
    the labeller records); an existing OUT or failed file that is damaged (other than a torn last
    frame, which is cut off) or not this run's is refused and left untouched.

    Where it runs: `executor="local"` (default) with `workers=1` labels in this process;
    `workers=N` in N worker processes. `executor="dask"` uses the cluster at `scheduler` (an
    address such as tcp://node:8786; `scheduler_timeout` seconds to connect), or without one a
    dask.distributed LocalCluster of `workers` processes. `threads` (a method option) is per
    worker: OMP/MKL/OpenBLAS and pyscf threads; by default the cores divided among the workers.
    `memory_limit` ('4GB', bytes) is per worker process. `chunk_size` structures form one task
    (by default one at first, then as many as take about half a second).
    A worker that dies loses only its chunk, which is labelled again; a structure that kills its
    worker repeatedly goes to the failed file. Losing the scheduler raises ExecutorError and
    keeps what was written; call again to resume.
    """
    out = Path(out)
    if format_of(out) != "extxyz":
        raise ValueError(
            f"{out}: labelled output must be .extxyz or .extxyz.gz (convert afterwards)"
        )
    failed = Path(failed) if failed is not None else default_failed_path(out)
    ds = (
        inputs
        if isinstance(inputs, Dataset)
        else (read(inputs) if isinstance(inputs, (str, Path)) else Dataset(inputs))
    )
    n = len(ds) if limit is None else min(limit, len(ds))
    order = (
        np.arange(len(ds))
        if shuffle is None
        else np.random.default_rng(shuffle).permutation(len(ds))
    )
    wanted = [int(i) for i in order[:n]]
    labeller = make_labeller(method, **method_options) if isinstance(method, str) else method
    settings = _settings_of(labeller)
    # Checked before any file is touched; a cluster is only contacted when there is work.
    run_on = _executor(
        method,
        labeller,
        method_options,
        executor=executor,
        workers=workers,
        scheduler=scheduler,
        memory_limit=memory_limit,
        chunk_size=chunk_size,
        scheduler_timeout=scheduler_timeout,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    created = not out.exists()
    # Hold an exclusive lock on OUT for the whole run: two writers would label structures twice.
    lock_fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{out} is being written by another mlsim label process") from None
        try:
            # Read and check both files completely before changing either: a file that is not
            # this run's (or damaged other than by a torn last append) must stay as it is.
            own_out, own_failed = read_own_frames(out), read_own_frames(failed)
            done = _check_existing(own_out.structures, ds, out, settings)
            failed_before = _check_existing(own_failed.structures, ds, failed, settings)
            if done & failed_before:
                raise ValueError(
                    f"structures {sorted(done & failed_before)[:5]} are in both {out} and {failed}"
                )
        except BaseException:
            if created and out.stat().st_size == 0:
                out.unlink()  # the lock made it; leave no empty output behind
            raise
        cut_torn_tail(out, own_out)
        cut_torn_tail(failed, own_failed)
        skip = done if retry_failed else done | failed_before
        todo = [i for i in wanted if i not in skip]
        n_already = n - len(todo)
        if retry_failed and failed_before:
            # The retried ones leave the failed file now; they come back there if they fail again.
            keep = [
                r
                for r in read_frames_repairing(failed)
                if int(r.info[INDEX_KEY]) not in set(wanted)
            ]
            from mlsim.data._io import write

            if keep:
                write(failed, keep)
            else:
                failed.unlink()  # nothing left: no empty file (reading one is an error)
        n_ok = n_bad = 0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=n,
                initial=n_already,
                desc=f"label {labeller.name}",
                unit="struct",
                file=sys.stderr,
            )
        records = {i: _record(ds[i], i) for i in todo}
        started = False
        try:
            with contextlib.ExitStack() as stack:
                if todo:
                    stack.enter_context(run_on)
                    started = True
                for i, outcome in run_on.map([(i, records[i]) for i in todo]) if todo else ():
                    rec = records.pop(i, None)
                    if rec is None:  # an executor bug, but never a structure written twice
                        continue
                    if isinstance(outcome, LabelFailure):
                        rec.info.update({**settings, "label_error": str(outcome)})
                        append_frames(failed, [rec])
                        n_bad += 1
                        print(f"structure {i}: {outcome} -> {failed}", file=sys.stderr)
                    else:
                        energy, forces, extra = outcome
                        extra = dict(extra)
                        stress = extra.pop("stress", None)  # a label, not info (periodic only)
                        rec.energy, rec.forces = energy, forces
                        if stress is not None:
                            rec.stress = np.asarray(stress, dtype=float).reshape(3, 3)
                        rec.info.update({**settings, **extra})
                        append_frames(out, [rec])
                        n_ok += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            failed=len(failed_before) + n_bad if not retry_failed else n_bad
                        )
        except BaseException as exc:
            if created and out.stat().st_size == 0:
                out.unlink()  # e.g. no cluster reached: leave no empty output behind
            if isinstance(exc, ExecutorError) and started:
                raise ExecutorError(
                    f"{exc}; the {n_ok} labelled and {n_bad} failed structures of this run are "
                    f"written to {out} and {failed}, {len(records)} are left: run the same "
                    "command again to resume"
                ) from exc
            raise
        finally:
            if bar is not None:
                bar.close()
        if n == len(ds) and str(out).lower().endswith(".gz") and todo:
            _compact(out)
    finally:
        os.close(lock_fd)
    return LabelSummary(n, n_already, n_ok, n_bad, out, failed)
