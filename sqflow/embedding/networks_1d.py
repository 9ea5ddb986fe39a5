"""1-D convolutional encoder for multivariate time series, and its input preprocessing.

The network is the fully convolutional network of Wang, Yan and Oates (2017, "Time series
classification from scratch with deep neural networks"), the standard deep baseline of the UCR
archive, with a small dense head to the embedding:

Conv1d(C->64, 7) - BN - ReLU - Conv1d(64->128, 5) - BN - ReLU - Conv1d(128->128, 3) - BN - ReLU -
global average over time - Dense(128->64) - ReLU - Dense(64->latent_dim).

"same" padding and the global average make it accept any length, so a batch is only resampled
to the training length for consistency (the filters were learned at that time resolution).

Preprocessing (kind ``"timeseries"``): inputs ``(N, T, C)`` (time, then channels: the layout of
the time-series source) are resampled to the training length T0 (:mod:`sqflow.resample`),
standardised per channel with the training mean and std (amplitude differences between series
are kept - a running and a standing accelerometer differ in them), and transposed to the
``(N, C, T0)`` layout of ``Conv1d``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..resample import resample_batch

__all__ = ["Conv1DEncoder", "series_preprocessing", "preprocess_series", "default_arch_1d"]


class Conv1DEncoder(nn.Module):
    """FCN-style 1-D convolutional encoder.

    Input: float32 ``(B, in_channels, T)`` (any T >= 1); output: float32 ``(B, latent_dim)``.
    """

    def __init__(
        self,
        in_channels: int,
        latent_dim: int = 3,
        widths: tuple[int, ...] = (64, 128, 128),
        kernels: tuple[int, ...] = (7, 5, 3),
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels={in_channels!r} must be a positive integer")
        if latent_dim < 1:
            raise ValueError(f"latent_dim={latent_dim!r} must be a positive integer")
        if len(widths) != len(kernels) or not widths:
            raise ValueError(
                f"widths {widths} and kernels {kernels} must be non-empty and of equal length"
            )
        layers: list[nn.Module] = []
        c = in_channels
        for w, k in zip(widths, kernels, strict=True):
            layers += [nn.Conv1d(c, int(w), int(k), padding=int(k) // 2), nn.BatchNorm1d(int(w))]
            layers.append(nn.ReLU())
            c = int(w)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=2))

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """The ``hidden``-wide layer before the latent projection, ``(B, hidden)``."""
        return self.head[:-1](self.features(x).mean(dim=2))


def default_arch_1d(spec: dict[str, Any], latent_dim: int) -> dict[str, Any]:
    """Default ``arch`` for preprocessing ``spec`` of kind "timeseries"."""
    return {
        "name": "conv1d",
        "latent_dim": latent_dim,
        "in_channels": int(spec["input_shape"][0]),
        "widths": [64, 128, 128],
        "kernels": [7, 5, 3],
        "hidden": 64,
    }


def build_conv1d(arch: dict[str, Any]) -> Conv1DEncoder:
    """:class:`Conv1DEncoder` from its ``arch`` dict (name "conv1d")."""
    return Conv1DEncoder(
        in_channels=int(arch["in_channels"]),
        latent_dim=int(arch["latent_dim"]),
        widths=tuple(int(w) for w in arch.get("widths", (64, 128, 128))),
        kernels=tuple(int(k) for k in arch.get("kernels", (7, 5, 3))),
        hidden=int(arch.get("hidden", 64)),
    )


def _check_series(x: np.ndarray) -> None:
    if x.ndim != 3:
        raise ValueError(f"time series must have shape (N, T, C); got {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"time series have dtype {x.dtype}; use a float or integer dtype")
    if x.size and not np.isfinite(x).all():
        raise ValueError(
            "time series contain NaN or infinite values; the time-series source quarantines "
            "such series - pass finite values only"
        )


def series_preprocessing(x: np.ndarray) -> dict[str, Any]:
    """Preprocessing description from training series ``x`` ``(N, T, C)``: training length and
    per-channel mean/std (``input_shape`` = ``[C, T]``, the network's layout)."""
    x = np.asarray(x)
    _check_series(x)
    xf = x.astype(np.float64).reshape(-1, x.shape[2])
    mean = xf.mean(axis=0)
    std = xf.std(axis=0)
    std[std == 0] = 1.0  # a constant channel stays 0 instead of dividing by zero
    return {
        "kind": "timeseries",
        "input_shape": [int(x.shape[2]), int(x.shape[1])],
        "mean": mean.tolist(),
        "std": std.tolist(),
    }


def preprocess_series(x: np.ndarray, spec: dict[str, Any]) -> torch.Tensor:
    """Raw series ``(N, T, C)`` -> float32 ``(N, C, T0)``: resampled to the training length T0,
    standardised per channel. Raises ValueError naming the shape when C differs."""
    x = np.asarray(x)
    _check_series(x)
    c, t0 = (int(s) for s in spec["input_shape"])
    if x.shape[2] != c:
        raise ValueError(
            f"time series have shape {x.shape} (N, T, C); this encoder expects C = {c} channels"
        )
    if len(x) == 0:
        return torch.empty((0, c, t0), dtype=torch.float32)
    x = resample_batch(x, t0) if x.shape[1] != t0 else x
    mean = np.asarray(spec["mean"], dtype=np.float64)
    std = np.asarray(spec["std"], dtype=np.float64)
    z = ((x.astype(np.float64) - mean) / std).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(z.transpose(0, 2, 1)))
