"""Linear resampling of time series to a fixed number of steps (numpy only, no torch).

Used by the time-series source (to stack series of unequal length into one ``(N, T, C)`` array)
and by the 1-D encoder's preprocessing (to bring a batch to the length the encoder was trained
on). Resampling keeps the whole course of a series (start and end stay in place) and changes only
its time resolution; it is the usual way UCR/UEA tools equalise lengths (aeon's ``Resizer``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["resample_series", "resample_batch"]


def resample_series(x: np.ndarray, length: int) -> np.ndarray:
    """One series ``x`` ``(T, C)`` linearly interpolated to ``(length, C)`` float32.

    Step i of the output sits at time ``i * (T - 1) / (length - 1)`` of the input. ``T`` must be
    >= 2 (a single step has no course to stretch) unless ``T == length``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"a series must have shape (T, C); got {x.shape}")
    if length < 2:
        raise ValueError(f"length={length!r} must be >= 2 steps")
    t = x.shape[0]
    if t == length:
        return x.astype(np.float32)
    if t < 2:
        raise ValueError(f"a series of {t} step(s) cannot be resampled to {length}; need >= 2")
    pos = np.linspace(0.0, t - 1, length)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, t - 1)
    w = (pos - lo)[:, None]
    return ((1.0 - w) * x[lo] + w * x[hi]).astype(np.float32)


def resample_batch(x: np.ndarray, length: int) -> np.ndarray:
    """A batch ``(N, T, C)`` resampled to ``(N, length, C)`` float32 (see :func:`resample_series`)."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"a batch of series must have shape (N, T, C); got {x.shape}")
    if x.shape[1] == length:
        return x.astype(np.float32, copy=False)
    t = x.shape[1]
    if t < 2:
        raise ValueError(f"series of {t} step(s) cannot be resampled to {length}; need >= 2")
    pos = np.linspace(0.0, t - 1, length)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, t - 1)
    w = (pos - lo)[None, :, None]
    xf = x.astype(np.float64)
    return ((1.0 - w) * xf[:, lo] + w * xf[:, hi]).astype(np.float32)
