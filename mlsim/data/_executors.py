"""Where labelling runs: in this process, in worker processes on this machine, or on a Dask cluster.

An executor takes (input index, Structure) pairs and yields (index, outcome) as results arrive, in
any order; the outcome is (energy eV, forces eV/A, extra info) or a LabelFailure. Work travels in
chunks of structures. Only the calling process writes the output (label() does, through its single
append-only writer), so a worker that dies loses at most the chunks it held, which are computed
again elsewhere; a result is yielded once per structure, never twice. A structure whose worker
dies every time it is tried comes back as a LabelFailure saying so, and goes to the failed file.

Workers rebuild the labeller from the method string and options (a Labeller object is pickled and
sent instead), once per worker process (per thread on Dask), with OMP/MKL/OpenBLAS limited to the
threads each worker may use, so N workers on N cores do not oversubscribe them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import pickle
import re
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mlsim.data._backends import LabelFailure, Labeller, make_labeller
from mlsim.data._structure import Structure

__all__ = [
    "DaskExecutor",
    "ExecutorError",
    "LabelExecutor",
    "LabellerSpec",
    "LocalExecutor",
    "SerialExecutor",
    "default_threads",
    "label_chunk",
    "parse_memory",
]

Task = tuple[int, Structure]
Outcome = tuple[float, np.ndarray, dict[str, Any]] | LabelFailure
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class ExecutorError(RuntimeError):
    """The executor itself failed (cluster unreachable or lost); labels already written are kept."""


class LabelExecutor(Protocol):
    """Runs labelling tasks somewhere and yields (index, outcome) as they complete, in any order."""

    def __enter__(self) -> LabelExecutor: ...

    def __exit__(self, *exc: object) -> None: ...

    def map(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Outcome]]: ...


@dataclass(frozen=True)
class LabellerSpec:
    """How a worker gets its labeller: make_labeller(method, **options), or a Labeller object sent along."""

    method: str | Labeller
    options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None  # per worker: OMP/BLAS threads, and pyscf's own
    memory_bytes: int | None = None  # per worker, for the failure message
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # the worker-side cache key

    def build(self) -> Labeller:
        """The labeller, built here (in a worker)."""
        if isinstance(self.method, str):
            return make_labeller(self.method, **self.options)
        return self.method


def parse_memory(limit: int | str | None) -> int | None:
    """'4GB', '512MiB', '2e9' or a byte count -> bytes (None stays None)."""
    if limit is None or isinstance(limit, int):
        if isinstance(limit, int) and limit <= 0:
            raise ValueError(f"memory limit must be > 0 bytes, got {limit}")
        return limit
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(i?)b?\s*", str(limit).lower())
    if not m:
        raise ValueError(f"memory limit {limit!r}: use bytes or a size like 4GB or 512MiB")
    base = 1024 if m.group(3) else 1000
    value = float(m.group(1)) * base ** " kmgt".index(m.group(2) or " ")
    if value <= 0:
        raise ValueError(f"memory limit must be > 0, got {limit!r}")
    return int(value)


CHUNK_SECONDS = 0.5  # work per task once the cost per structure is known: overhead < 1%
MAX_CHUNK = 64


class _Chunker:
    """Cuts the task list into chunks: a fixed size, or sized to about CHUNK_SECONDS of work.

    The cost per structure is unknown at first (xTB takes milliseconds, DFT minutes), so the first
    chunks hold one structure each; then each chunk holds CHUNK_SECONDS / (seconds per structure)
    of them, 1 for DFT, and never so many that fewer than 4 chunks per worker remain.
    """

    def __init__(self, tasks: Sequence[Task], size: int | None) -> None:
        self.tasks, self.size = deque(tasks), size
        self.seconds = 0.0
        self.measured = 0

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def observe(self, n: int, seconds: float) -> None:
        """Record that a chunk of `n` structures took `seconds` in its worker."""
        self.measured += n
        self.seconds += seconds

    def next(self, slots: int) -> list[Task]:
        """The next chunk, for a pool of `slots` workers."""
        size = self.size
        if size is None:
            if not self.measured:
                size = 1
            else:
                per = max(self.seconds / self.measured, 1e-6)
                balance = max(1, len(self.tasks) // (4 * max(1, slots)))
                size = max(1, min(MAX_CHUNK, balance, int(CHUNK_SECONDS / per)))
        return [self.tasks.popleft() for _ in range(min(size, len(self.tasks)))]


def _thread_env(threads: int | None) -> dict[str, str]:
    return {} if threads is None else dict.fromkeys(THREAD_VARS, str(threads))


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block: spawned workers inherit them at start."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _limit_threads(threads: int | None) -> contextlib.AbstractContextManager[Any]:
    """Limit OpenMP and BLAS thread pools (those loaded now) to `threads` while the block runs."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not installed (mlsim[label] has it): workers still get the env vars
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


@dataclass
class _Raised:
    """An exception other than LabelFailure inside a worker, carried back to be raised by the caller."""

    exc: BaseException | None  # None when it could not be pickled
    text: str  # type, message and the worker's traceback

    @classmethod
    def of(cls, exc: BaseException) -> _Raised:
        text = "".join(traceback.format_exception(exc))
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            return cls(None, text)
        return cls(exc, text)

    def reraise(self, index: int) -> None:
        exc = self.exc or RuntimeError(self.text.strip().splitlines()[-1])
        exc.add_note(f"while labelling input structure {index} in a worker; its traceback:")
        exc.add_note(self.text.rstrip())
        raise exc


# Worker side: one labeller per (spec, thread), built on first use. ASE calculators keep state
# between calls, so threads of one Dask worker must not share one.
_LABELLERS: dict[tuple[str, int], Labeller] = {}


def _worker_labeller(spec: LabellerSpec) -> Labeller:
    thread = threading.get_ident()
    key = (spec.token, thread)
    lab = _LABELLERS.get(key)
    if lab is None:
        # A long-lived cluster serves one label() call after another: keep only this call's.
        for old in [k for k in _LABELLERS if k[1] == thread]:
            del _LABELLERS[old]
        # The libraries a labeller loads (pyscf, tblite) read OMP_NUM_THREADS when they load.
        with _environ(_thread_env(spec.threads)):
            lab = spec.build()
        _LABELLERS[key] = lab
    return lab


def label_chunk(spec: LabellerSpec, chunk: Sequence[Task]) -> tuple[list[tuple[int, Any]], float]:
    """Label a chunk in a worker: ([(index, (energy, forces, info) | LabelFailure | _Raised)], seconds)."""
    try:
        lab = _worker_labeller(spec)
    except Exception as exc:
        return [(chunk[0][0], _Raised.of(exc))], 0.0
    t0 = time.perf_counter()  # after the labeller's construction: not the structures' cost
    results: list[tuple[int, Any]] = []
    # The limits are set per call: on Dask the task thread may differ from the one that built it.
    with _limit_threads(spec.threads):
        for i, s in chunk:
            try:
                results.append((i, lab(s)))
            except LabelFailure as exc:
                results.append((i, LabelFailure(str(exc))))
            except MemoryError:
                limit = f" (memory limit {spec.memory_bytes / 1e9:.3g} GB per worker)"
                results.append(
                    (i, LabelFailure("out of memory" + (limit if spec.memory_bytes else "")))
                )
            except Exception as exc:
                results.append((i, _Raised.of(exc)))
                break  # the caller stops at the first such error, as a serial run would
    return results, time.perf_counter() - t0


def _outcomes(
    done: tuple[list[tuple[int, Any]], float], chunker: _Chunker
) -> Iterator[tuple[int, Outcome]]:
    results, seconds = done
    chunker.observe(len(results), seconds)
    for i, outcome in results:
        if isinstance(outcome, _Raised):
            outcome.reraise(i)
        yield i, outcome


class SerialExecutor:
    """Label in this process, one structure after another (workers=1: no process pool, as fast as ever)."""

    def __init__(self, labeller: Labeller, threads: int | None = None) -> None:
        self.labeller, self.threads = labeller, threads

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def map(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Outcome]]:
        """Label each task in order; exceptions other than LabelFailure propagate."""
        with _limit_threads(self.threads):
            for i, s in tasks:
                try:
                    outcome: Outcome = self.labeller(s)
                except LabelFailure as exc:
                    outcome = exc
                except Exception as exc:
                    exc.add_note(f"while labelling input structure {i}")
                    raise
                yield i, outcome


def _die_with_parent(parent: int) -> None:
    """End this worker when the labelling process dies (SIGKILL included).

    Pool workers wait on a queue whose write end they hold themselves, so they would never see
    EOF and would linger, idle or computing for nobody. On Linux the kernel sends SIGKILL when
    the parent goes; elsewhere a thread polls for it.
    """
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


def _init_local_worker(memory_bytes: int | None, parent: int) -> None:
    """Process-pool worker start: die with the parent, leave Ctrl-C to it, apply the memory limit."""
    import resource
    import signal

    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_bytes:
        # RLIMIT_DATA counts heap and private anonymous maps: numpy/pyscf allocations beyond it
        # fail with MemoryError (-> LabelFailure "out of memory") instead of swapping the node.
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


class LocalExecutor:
    """Worker processes on this machine (concurrent.futures, spawn start method).

    A worker that dies (killed, segfault, out of memory) breaks the pool: its finished chunks are
    kept, the lost ones are requeued as single structures that then run one at a time in a fresh
    pool, so a death can be pinned on one structure; one that kills its worker `max_deaths` times
    on its own comes back as a LabelFailure.
    """

    def __init__(
        self,
        spec: LabellerSpec,
        workers: int,
        *,
        memory_bytes: int | None = None,
        chunk_size: int | None = None,
        max_deaths: int = 2,
    ) -> None:
        self.spec, self.workers, self.memory_bytes = spec, workers, memory_bytes
        self.chunk_size, self.max_deaths = chunk_size, max_deaths
        self._pool: Any = None
        self.restarts = 0  # pools started after a worker died

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._close(kill=exc_type is not None)

    def _close(self, kill: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            # Interrupted or failed: do not wait for DFT calculations nobody will write (the
            # pool has no public way to stop running work before Python 3.14).
            for p in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

    def _new_pool(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold threads (tqdm, OpenMP pools) that fork would copy
        # in an arbitrary state.
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_local_worker,
            initargs=(self.memory_bytes, os.getpid()),
        )

    def _submit(self, chunk: list[Task]) -> Any:
        if self._pool is None:
            self._pool = self._new_pool()
        # Workers are spawned inside submit(): they start with the thread limits in their
        # environment, before numpy loads its BLAS.
        with _environ(_thread_env(self.spec.threads)):
            return self._pool.submit(label_chunk, self.spec, chunk)

    def map(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Outcome]]:
        """Yield (index, outcome) as chunks complete; requeue the chunks of a worker that died."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        chunks = _Chunker(tasks, self.chunk_size)
        suspects: deque[Task] = deque()  # lost when a worker died: run alone to find the culprit
        deaths: dict[int, int] = {}
        inflight: dict[Any, list[Task]] = {}
        while chunks or suspects or inflight:
            unsent: list[Task] = []
            try:
                if suspects:
                    if not inflight:
                        unsent = [suspects.popleft()]
                        inflight[self._submit(unsent)] = unsent
                        unsent = []
                else:
                    while chunks and len(inflight) < 2 * self.workers:
                        unsent = chunks.next(self.workers)
                        inflight[self._submit(unsent)] = unsent
                        unsent = []
            except BrokenProcessPool:
                pass  # a worker died since the last look: handled below, `unsent` included
            else:
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                if not any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    for f in done:
                        inflight.pop(f)
                        yield from _outcomes(f.result(), chunks)
                    continue
            # A worker died and took the pool with it; after shutdown every future is settled.
            self._pool.shutdown(wait=True)
            self._pool = None
            self.restarts += 1
            lost: list[Task] = []
            for f, chunk in inflight.items():
                if f.exception() is None:
                    yield from _outcomes(f.result(), chunks)
                elif isinstance(f.exception(), BrokenProcessPool):
                    lost.extend(chunk)
                else:
                    f.result()  # raises it
            inflight.clear()
            if len(lost) == 1:  # it ran alone: this structure killed its worker
                i = lost[0][0]
                deaths[i] = deaths.get(i, 0) + 1
                if deaths[i] >= self.max_deaths:
                    yield i, LabelFailure(self._death_reason(deaths[i]))
                    lost = []
            suspects.extend(lost + unsent)

    def _death_reason(self, n: int) -> str:
        hint = (
            f"over the {self.memory_bytes / 1e9:.3g} GB memory limit?"
            if self.memory_bytes
            else "killed, out of memory or a crash in native code?"
        )
        return f"the worker process died {n} times while labelling this structure ({hint})"


class _Cached:
    """A function's value, recomputed at most every `seconds`."""

    def __init__(self, fn: Any, seconds: float) -> None:
        self.fn, self.seconds = fn, seconds
        self.value: Any = None
        self.at = -math.inf

    def __call__(self) -> Any:
        now = time.monotonic()
        if now - self.at > self.seconds:
            self.value, self.at = self.fn(), now
        return self.value


class DaskExecutor:
    """Dask: an existing cluster (scheduler address) or a LocalCluster of `workers` processes.

    Chunks are submitted with `retries` (a task that raised is tried again elsewhere) and
    collected with as_completed. A worker that dies is the scheduler's business: it reruns the
    worker's tasks elsewhere and gives up on one after `distributed.scheduler.allowed-failures`
    deaths (KilledWorker; set to max_deaths - 1 on a LocalCluster made here). A chunk given up
    on is split into single structures; a single structure given up on becomes a LabelFailure.
    Losing the scheduler raises ExecutorError at once (the client cancels every future).
    """

    def __init__(
        self,
        spec: LabellerSpec,
        *,
        scheduler: str | None = None,
        workers: int | None = None,
        memory_bytes: int | None = None,
        chunk_size: int | None = None,
        timeout: float = 10.0,
        retries: int = 1,
        max_deaths: int = 3,
    ) -> None:
        self.spec, self.scheduler, self.workers = spec, scheduler, workers
        self.memory_bytes, self.chunk_size, self.timeout = memory_bytes, chunk_size, timeout
        self.retries, self.max_deaths = retries, max_deaths
        self.client: Any = None
        self.cluster: Any = None
        self._saved_env: dict[str, str | None] = {}
        self._lost = False  # the scheduler connection broke

    @property
    def where(self) -> str:
        """The scheduler, for messages."""
        if self.scheduler:
            return f"the Dask scheduler at {self.scheduler}"
        addr = getattr(self.cluster, "scheduler_address", None)
        return f"the local Dask cluster{f' at {addr}' if addr else ''}"

    def __enter__(self) -> DaskExecutor:
        try:
            from dask.distributed import Client
        except ImportError as exc:
            raise ExecutorError(
                f"the dask executor needs dask.distributed ({exc}); pip install 'mlsim[dask]'"
            ) from exc
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout=self.timeout, set_as_default=False)
            except (OSError, TimeoutError, ValueError, TypeError) as exc:
                raise ExecutorError(
                    f"cannot connect to the Dask scheduler at {self.scheduler!r} within "
                    f"{self.timeout:g} s: {exc}"
                ) from exc
            return self
        try:
            self._start_local_cluster()
            self.client = Client(self.cluster, set_as_default=False)
        except BaseException:
            self.__exit__(None)
            raise
        return self

    def _start_local_cluster(self) -> None:
        import dask
        from dask.distributed import LocalCluster

        threads = _thread_env(self.spec.threads)
        env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}) | threads
        # Dask's MALLOC_TRIM_THRESHOLD_=65536 hands freed memory back to the OS at once: pyscf
        # then faults its arrays in again, 14x the page faults and +25% CPU per DFT structure
        # (measured on ethanol B3LYP/6-31G*). None leaves glibc's own adaptive thresholds.
        env["MALLOC_TRIM_THRESHOLD_"] = None
        # The nannies live in this process and copy pre-spawn-environ into os.environ before
        # each worker start (this process's own values of those variables win over the config,
        # hence they are set here too); everything is put back on exit.
        self._saved_env = {k: os.environ.get(k) for k in (*env, "PYTHONHASHSEED")}
        os.environ.update(threads)
        config = {
            "distributed.nanny.pre-spawn-environ": env,
            "distributed.scheduler.allowed-failures": max(0, self.max_deaths - 1),
            # Tasks here take milliseconds to hours, never microseconds: Dask's fine-grained
            # housekeeping (10 ms stack sampling in every worker, 20 ms event-loop ticks,
            # 100 ms memory polls) cost 6.4% of a core for an idle 2-worker cluster, 2% so.
            "distributed.worker.profile.enabled": False,
            "distributed.admin.tick.interval": "200ms",
            "distributed.admin.system-monitor.interval": "2s",
            "distributed.worker.memory.monitor-interval": "500ms",
        }
        with dask.config.set(config):
            self.cluster = LocalCluster(
                n_workers=self.workers or 1,
                threads_per_worker=1,
                processes=True,
                memory_limit=self.memory_bytes or "auto",
                dashboard_address=None,
                env=threads,  # and once more inside each worker, before it runs anything
            )

    def __exit__(self, *exc: object) -> None:
        client, self.client = self.client, None
        cluster, self.cluster = self.cluster, None
        if client is not None:
            # After a lost scheduler, closing cancels the client's reconnection attempts, which
            # distributed logs as errors with tracebacks: noise after our own clear message.
            quiet = ("distributed.client", "distributed.batched") if self._lost else ()
            levels = {name: logging.getLogger(name).level for name in quiet}
            for name in quiet:
                logging.getLogger(name).setLevel(logging.CRITICAL)
            try:
                with contextlib.suppress(Exception):
                    client.close(timeout=5)
            finally:
                for name, level in levels.items():
                    logging.getLogger(name).setLevel(level)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=20)
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}

    def _slots(self) -> int:
        """Task threads on the cluster now (at least 1: jobs may still be queued)."""
        with contextlib.suppress(Exception):
            return max(1, sum(self.client.nthreads().values()))
        return 1

    def map(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Outcome]]:
        """Submit chunks (a bounded window of them), yield results as they arrive."""
        from dask.distributed import KilledWorker, as_completed

        chunks = _Chunker(tasks, self.chunk_size)
        prefix = f"mlsim-label-{self.spec.token[:8]}"
        counter = itertools.count()
        futures: dict[Any, list[Task]] = {}
        ac = as_completed(loop=self.client.loop)
        slots = _Cached(self._slots, seconds=2.0)  # workers come and go (jobqueue, adaptive)

        def submit(chunk: list[Task]) -> None:
            key = f"{prefix}-{chunk[0][0]}-{next(counter)}"
            f = self.client.submit(
                label_chunk, self.spec, chunk, key=key, pure=False, retries=self.retries
            )
            futures[f] = chunk
            ac.add(f)

        def refill() -> None:
            n = slots()
            while chunks and len(futures) < max(8, 2 * n):  # every worker busy, one queued
                submit(chunks.next(n))

        try:
            refill()
            for f in ac:
                chunk = futures.pop(f)
                if f.status == "cancelled":
                    self._lost = True
                    raise ExecutorError(f"lost the connection to {self.where}")
                if f.status == "error":
                    exc = f.exception()
                    if not isinstance(exc, KilledWorker):
                        f.result()  # raises it
                    if len(chunk) > 1:  # find the structure that kills its worker
                        for task in chunk:
                            submit([task])
                    else:
                        msg = "the Dask workers running this structure died repeatedly"
                        yield chunk[0][0], LabelFailure(f"{msg} ({type(exc).__name__}: {exc})")
                else:
                    yield from _outcomes(f.result(), chunks)
                refill()
        except ExecutorError:
            raise
        except Exception as exc:
            from distributed.comm import CommClosedError

            lost = (CommClosedError, OSError, TimeoutError, asyncio.CancelledError)
            if isinstance(exc, lost):
                self._lost = True
                raise ExecutorError(
                    f"lost the connection to {self.where} ({type(exc).__name__})"
                ) from exc
            raise
        finally:
            for f in futures:
                with contextlib.suppress(Exception):
                    f.cancel()


def default_threads(workers: int) -> int:
    """Threads per worker so that `workers` workers fill this machine's cores and no more."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, math.floor(cores / max(1, workers)))
