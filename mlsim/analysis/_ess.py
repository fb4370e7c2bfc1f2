"""Effective sample size of a correlated time series (how many independent draws it is worth)."""

from __future__ import annotations

import numpy as np

__all__ = ["effective_sample_size"]


def effective_sample_size(x: np.ndarray, periodic: bool = False, window: float = 5.0) -> float:
    """n / tau_int with Sokal's automatic window; `periodic` angles (radians) use sin and cos."""
    if periodic:
        # An angle's mean and autocorrelation are meaningless across the +-pi seam: take the
        # worse of its sine and cosine, which are smooth functions of it.
        theta = np.asarray(x, dtype=np.float64)
        return min(
            effective_sample_size(np.sin(theta), window=window),
            effective_sample_size(np.cos(theta), window=window),
        )
    x = np.asarray(x, dtype=np.float64).ravel()
    n = len(x)
    if n == 0:
        raise ValueError("effective_sample_size needs at least one sample")
    if not np.all(np.isfinite(x)):
        raise ValueError("effective_sample_size got NaN or infinite samples")
    x = x - x.mean()
    if n < 10 or not np.any(x):
        # Too short to estimate an autocorrelation, or constant: worth nothing beyond one draw.
        return 0.0
    # Autocorrelation by FFT, zero-padded to 2n so the circular correlation does not wrap.
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf /= acf[0]
    tau = 1.0
    for w in range(1, n):
        tau = 1.0 + 2.0 * acf[1 : w + 1].sum()
        if w >= window * tau:
            break
    return float(n / max(tau, 1.0))
