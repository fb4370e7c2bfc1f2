"""Writing a run's files: failures that name the file and what was kept, and the event log (train.log)."""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mlsim._fileio import atomic_write, write_text

__all__ = ["OutputWriteError", "RunLog", "atomic_save", "why", "write_output"]


class OutputWriteError(OSError):
    """A training output (checkpoint, log, model) could not be written: disk full, quota, size limit."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through mlsim's atomic writer (never a half-written file)."""
    # Serialised in memory first: a failed write then surfaces as Python's OSError with its errno
    # (EFBIG, ENOSPC) instead of torch's errno-less "file write failed".
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getbuffer())


def why(exc: BaseException) -> str:
    """Why a write failed, in one line (the OS error when there is one)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{os.strerror(exc.errno)} (errno {exc.errno})"
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _is_write_failure(exc: BaseException) -> bool:
    """An OS error, or torch's C++ writer failing (a RuntimeError that carries no errno)."""
    if isinstance(exc, OSError):
        return True
    text = f"{exc} {exc.__context__ or ''}".lower()
    return "write failed" in text or "failed writing" in text


def write_output(
    what: str, path: Path, write: Callable[..., Any], *args: Any, after: str = ""
) -> None:
    """Run `write(*args)`; a failure becomes OutputWriteError naming the file (the old one is kept)."""
    try:
        write(*args)
    except (OSError, RuntimeError) as exc:
        if not _is_write_failure(exc):
            raise  # e.g. a TorchScript error in save_model: not a disk problem
        raise OutputWriteError(
            f"cannot write the {what} {path}: {why(exc)} (disk full, quota or file-size limit?); "
            f"nothing half-written was left behind{after}"
        ) from exc


class RunLog:
    """Events of a run in words (OUTPUT/train.log, kept across resumes) and on stderr.

    log.csv has one row per epoch; this file holds what happened around them: resumes, changed
    settings, warnings, why training stopped. Only rank 0 writes (`enabled`).
    """

    def __init__(self, path: Path, enabled: bool) -> None:
        """Log to `path` (appending) when `enabled`; otherwise every call does nothing."""
        self.path = path
        self.enabled = enabled

    def info(self, message: str) -> None:
        """Record an event."""
        self._add("info", message)

    def warning(self, message: str) -> None:
        """Record a warning (also printed on stderr as 'warning: ...')."""
        self._add("warning", message)

    def _add(self, level: str, message: str) -> None:
        if not self.enabled:
            return
        prefix = "mlsim train: warning: " if level == "warning" else "mlsim train: "
        print(prefix + message, file=sys.stderr, flush=True)
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {level}: {message}\n"
        old = self.path.read_text() if self.path.exists() else ""
        write_output("log", self.path, write_text, self.path, old + line)
