"""Neighbor lists: O(N) cell list in C++, for NumPy arrays (mlsim._core) and torch tensors.

Pairs follow ASE's ``neighbor_list('ijS')`` convention: the pair vector is
``positions[j] - positions[i] + shifts @ cell`` and is shorter than ``cutoff``.

The torch ops ``torch.ops.mlsim.neighbor_list`` and ``torch.ops.mlsim.neighbor_list_batch`` live
in their own library, ``libmlsim_torch.so`` (:func:`ops_library_path`), which links libtorch and
nothing of Python; importing this module loads it. They can be called from ``torch.jit.script``
code and return integer tensors only; build the distance vectors in torch
(``R[j] - R[i] + shifts.to(R.dtype) @ cell``) so that gradients flow to positions and cell.

A TorchScript file that calls the ops (a periodic OpenMM export, see ``mlsim export``) loads in a
host without mlsim once the library is loaded there: ``torch.ops.load_library(path)`` in Python,
``dlopen(path, RTLD_NOW)`` in a C++ program before ``torch::jit::load`` or ``TorchForce``, or
``LD_PRELOAD=path`` for a program that cannot be changed. The host must use the libtorch the
library was built against (the one in mlsim's environment).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from mlsim import _core

__all__ = ["neighbor_list", "neighbor_list_batch_torch", "neighbor_list_torch", "ops_library_path"]


def ops_library_path() -> str:
    """Absolute path of libmlsim_torch.so, the library that registers mlsim's TorchScript ops."""
    # Installed next to mlsim._core (also in editable installs, where the package's Python files
    # stay in the source tree but the compiled files do not).
    name = "libmlsim_torch.dylib" if sys.platform == "darwin" else "libmlsim_torch.so"
    return os.path.join(os.path.dirname(os.path.abspath(_core.__file__)), name)


def _load_ops() -> None:
    """Register torch.ops.mlsim.* by loading the op library (once; a host may have done it)."""
    try:
        torch.ops.mlsim.neighbor_list  # noqa: B018 - raises AttributeError while not registered
        return
    except (AttributeError, RuntimeError):
        pass
    path = ops_library_path()
    if not os.path.isfile(path):
        raise ImportError(
            f"mlsim's TorchScript op library is missing ({path}); rebuild mlsim with `make install`"
        )
    try:
        torch.ops.load_library(path)
    except OSError as exc:  # e.g. built against another torch than the one imported
        raise ImportError(
            f"cannot load mlsim's TorchScript op library {path} into torch {torch.__version__}: "
            f"{exc}; rebuild mlsim with `make install`"
        ) from exc


_load_ops()


def _as_pbc(pbc: bool | np.ndarray | list[bool] | tuple[bool, ...]) -> tuple[bool, bool, bool]:
    """Normalise a bool or 3 bools to a tuple of 3 Python bools."""
    arr = np.asarray(pbc)
    if arr.shape == ():
        return (bool(arr),) * 3
    if arr.shape != (3,):
        raise ValueError(f"pbc must be a bool or 3 bools, got shape {arr.shape}")
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"pbc must contain bools, got dtype {arr.dtype}")
    return (bool(arr[0]), bool(arr[1]), bool(arr[2]))


def _check_cutoff(cutoff: float) -> float:
    """Return cutoff as float, or raise ValueError unless it is finite and > 0."""
    try:
        value = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a number, got {cutoff!r}") from None
    if not np.isfinite(value) or value <= 0.0:
        raise ValueError(f"cutoff must be a finite number > 0 Angstrom, got {value}")
    return value


def neighbor_list(
    positions: np.ndarray,
    cutoff: float,
    cell: np.ndarray | None = None,
    pbc: bool | np.ndarray | list[bool] | tuple[bool, ...] = False,
    full: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs closer than ``cutoff``: int64 ``(i, j, shifts)`` with vector ``R[j] - R[i] + S @ cell``.

    positions: (N, 3) float array in Angstrom; cell: (3, 3) with lattice vectors as rows, or None;
    pbc: bool or 3 bools; full: list (i, j) and (j, i) (True) or each pair once (False).
    Pairs are grouped by increasing i. Atoms outside the cell are handled (wrapped internally).

    Raises MemoryError, with the estimated pair count, when the list cannot fit in memory: up
    front when the estimate (density x cutoff sphere x N) exceeds the memory available (an
    absurd cutoff or N), or when an allocation fails during the search.
    """
    pos = np.asarray(positions)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {pos.shape}")
    if pos.dtype not in (np.float32, np.float64):
        if not np.issubdtype(pos.dtype, np.number) or np.iscomplexobj(pos):
            raise ValueError(f"positions must be a float32 or float64 array, got dtype {pos.dtype}")
        pos = pos.astype(np.float64)
    if not np.all(np.isfinite(pos)):
        bad = int(np.flatnonzero(~np.isfinite(pos).all(axis=1))[0])
        raise ValueError(f"positions contain NaN or infinite values (first bad atom: {bad})")
    cutoff = _check_cutoff(cutoff)
    periodic = _as_pbc(pbc)
    cell_arr = None
    if cell is not None:
        cell_arr = np.asarray(cell, dtype=np.float64)
        if cell_arr.shape != (3, 3):
            raise ValueError(
                f"cell must have shape (3, 3) with lattice vectors as rows, got {cell_arr.shape}"
            )
        if not np.all(np.isfinite(cell_arr)):
            raise ValueError("cell contains NaN or infinite values")
    elif any(periodic):
        raise ValueError("pbc is True along some direction but cell is None")
    return _core.neighbor_list(pos, cutoff, cell_arr, periodic, bool(full))


def neighbor_list_torch(
    positions: torch.Tensor,
    cutoff: float,
    cell: torch.Tensor | None = None,
    pbc: torch.Tensor | None = None,
    full: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch version of :func:`neighbor_list` (CPU or CUDA); calls ``torch.ops.mlsim.neighbor_list``.

    positions: (N, 3) float32/float64; cell: (3, 3) same dtype or None (no cell); pbc: (3,) bool
    tensor or None (no pbc). Returns int64 (i, j, shifts) on the device of positions.
    A list too large for memory raises MemoryError, as in :func:`neighbor_list`.
    """
    if cell is None:
        cell = torch.zeros((3, 3), dtype=positions.dtype, device=positions.device)
    if pbc is None:
        pbc = torch.zeros(3, dtype=torch.bool, device=positions.device)
    return torch.ops.mlsim.neighbor_list(positions, cell, pbc, float(cutoff), bool(full))


def neighbor_list_batch_torch(
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    ptr: torch.Tensor,
    cutoff: float,
    full: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbor lists of B structures at once; calls ``torch.ops.mlsim.neighbor_list_batch``.

    positions: (N, 3) all atoms; cell: (B, 3, 3); pbc: (B, 3) bool; ptr: (B + 1,) int64 offsets,
    structure b owning atoms ptr[b]:ptr[b+1]. Returned i and j are global atom indices.
    """
    return torch.ops.mlsim.neighbor_list_batch(
        positions, cell, pbc, ptr.to(torch.int64), float(cutoff), bool(full)
    )
