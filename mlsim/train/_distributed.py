"""Data parallelism by hand under torchrun: process group, gradient sums, shared decisions.

Every rank takes an equal contiguous share of each global batch (the same seeded permutation on
every rank), computes its share of the *global-mean* loss, and the gradients are summed with one
all_reduce (gloo on CPU, nccl on GPU). This is what DDP does; it is done by hand because DDP's
bucketed hooks do not support the double backward that force training needs. The result equals
a single-process run with the same global batch up to float summation order.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "all_reduce_grads",
    "barrier",
    "broadcast",
    "from_rank0",
    "init_distributed",
    "sum_arrays",
]

T = TypeVar("T")


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: cuda was requested but no CUDA GPU is available")
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world <= 1:
        return 0, 1, dev
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def all_reduce_grads(params: list[torch.nn.Parameter], extra: torch.Tensor) -> torch.Tensor:
    """Sum gradients (and a few scalars) over ranks with one flattened all_reduce."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [extra.reshape(-1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    k = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[k : k + n].view_as(p).clone()
        k += n
    return flat[k:]


def sum_arrays(arrays: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """Element-wise sums over ranks of float64 arrays (one all_reduce for all of them)."""
    import torch.distributed as dist

    flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays])).to(device)
    dist.all_reduce(flat)
    flat_np = flat.cpu().numpy()
    out, k = [], 0
    for a in arrays:
        out.append(flat_np[k : k + a.size].reshape(a.shape).copy())
        k += a.size
    return out


def barrier(world: int) -> None:
    """Wait for every rank (nothing to do alone)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: Any, world: int) -> Any:
    """Rank 0's `obj` on every rank (pickled)."""
    if world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_rank0(fn: Callable[[], T], rank: int, world: int) -> T:
    """Run `fn` on rank 0 only and give every rank its result; its error is raised on every rank."""
    if world <= 1:
        return fn()
    result: Any = None
    error: BaseException | None = None
    if rank == 0:
        try:
            result = fn()
        except Exception as exc:  # shared below, then raised again here
            error = exc
    shared = error
    if error is not None:
        try:
            pickle.dumps(error)
        except Exception:  # an exception that cannot travel: its text does
            shared = RuntimeError(f"{type(error).__name__}: {error}")
    result, shared = broadcast((result, shared), world)
    if error is not None:
        raise error
    if shared is not None:
        raise shared
    return result
