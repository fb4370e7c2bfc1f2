"""Kabsch superposition, used to remove overall tumbling from training pairs."""

from __future__ import annotations

import numpy as np

__all__ = ["kabsch_align"]


def kabsch_align(mobile: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Rigidly superimpose mobile (B, n, 3) onto ref (B, n, 3) (equal weights, no reflection)."""
    mobile = np.asarray(mobile, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    cm, cr = mobile.mean(1, keepdims=True), ref.mean(1, keepdims=True)
    p, q = mobile - cm, ref - cr
    h = np.einsum("bni,bnj->bij", p, q)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("bij,bjk->bik", u, vt)))
    u[:, :, -1] *= d[:, None]
    r = np.einsum("bij,bjk->bik", u, vt)
    return np.einsum("bni,bij->bnj", p, r) + cr
