"""Encoder networks: the paper's CNN for single-channel images and an MLP for feature vectors.

Both map a float32 batch to ``(B, latent_dim)``. Each network is fully described by a small
JSON-serialisable ``arch`` dict (see :func:`build_network`), which is what checkpoints store.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["PaperCNN", "MLPEncoder", "build_network"]


class PaperCNN(nn.Module):
    """The paper's triplet encoder (PAPER.md section 4), for images of any size.

    Conv(C->32, 3x3, pad 1) - ReLU - MaxPool 2 - Conv(32->64, 3x3, pad 1) - ReLU - MaxPool 2 -
    Flatten - Dense(F->64) - ReLU - Dense(64->latent_dim).

    ``F = 64 * (H // 4) * (W // 4)``: for 28x28 inputs this is the paper's 3136; for other sizes
    the flatten size is computed from ``image_size`` (no resizing, so every pixel is seen).

    Input: float32 ``(B, in_channels, H, W)``; output: float32 ``(B, latent_dim)``.
    """

    def __init__(
        self,
        latent_dim: int = 3,
        image_size: tuple[int, int] = (28, 28),
        in_channels: int = 1,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        h, w = (int(s) for s in image_size)
        if h < 4 or w < 4:
            raise ValueError(f"image_size={image_size!r}: both sides must be >= 4 pixels")
        if latent_dim < 1:
            raise ValueError(f"latent_dim={latent_dim!r} must be a positive integer")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = 64 * (h // 4) * (w // 4)
        self.head = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """The ``hidden``-wide layer before the latent projection, ``(B, hidden)``."""
        return self.head[:-1](self.features(x))


class MLPEncoder(nn.Module):
    """Multi-layer perceptron for plain feature vectors (sensor or tabular rows).

    Linear(in_features->h1) - ReLU - ... - Linear(h_last->latent_dim).
    Input: float32 ``(B, in_features)``; output: float32 ``(B, latent_dim)``.
    """

    def __init__(
        self, in_features: int, latent_dim: int = 3, hidden: tuple[int, ...] = (128, 64)
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features={in_features!r} must be a positive integer")
        if latent_dim < 1:
            raise ValueError(f"latent_dim={latent_dim!r} must be a positive integer")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer before the latent projection, ``(B, hidden[-1])``."""
        return self.net[:-1](x)


def build_network(arch: dict[str, Any]) -> nn.Module:
    """Build a network from its description.

    ``{"name": "paper_cnn", "latent_dim": 3, "image_size": [28, 28], "in_channels": 1,
    "hidden": 64}`` or ``{"name": "mlp", "in_features": D, "latent_dim": 3, "hidden": [128, 64]}``.
    """
    name = arch.get("name")
    if name == "paper_cnn":
        return PaperCNN(
            latent_dim=int(arch["latent_dim"]),
            image_size=tuple(arch["image_size"]),  # type: ignore[arg-type]
            in_channels=int(arch.get("in_channels", 1)),
            hidden=int(arch.get("hidden", 64)),
        )
    if name == "mlp":
        return MLPEncoder(
            in_features=int(arch["in_features"]),
            latent_dim=int(arch["latent_dim"]),
            hidden=tuple(int(h) for h in arch.get("hidden", (128, 64))),
        )
    if name == "conv1d":  # time series (N, C, T): see networks_1d
        from .networks_1d import build_conv1d

        return build_conv1d(arch)
    raise ValueError(f"architecture name {name!r} is not known; use 'paper_cnn', 'mlp' or 'conv1d'")
