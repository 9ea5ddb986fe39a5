"""Random views of a training batch: affine jitter for images, corruption for feature vectors.

Every random number comes from a CPU ``torch.Generator`` passed in by the caller, so a seed gives
the same views on any device (and bit-identical ones on CPU).

* Images: :func:`affine_views` rotates, shifts and (optionally) scales every image on its own,
  bilinear, background (0) filled - the placement and camera jitter of an inspection line.
* Feature vectors (already standardised, so 0 is the training mean): :func:`tabular_views`
  replaces a random share of the features by 0 ("masking"/feature corruption, as in VIME and
  SCARF-style tabular self-supervision) and adds Gaussian noise, so a view keeps the row's
  identity while no single feature can be relied on.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "IMAGE_AUGMENT_DEFAULT",
    "IMAGE_VIEWS_DEFAULT",
    "TABULAR_VIEWS_DEFAULT",
    "augment_ranges",
    "view_ranges",
    "affine_views",
    "tabular_views",
    "make_views",
]

#: ranges of ``train_encoder(augment=True)`` (supervised jitter): degrees, fraction of the size
IMAGE_AUGMENT_DEFAULT = {"rotation": 10.0, "shift": 0.08}
#: ranges of the two views of the label-free objective on images (stronger: the views must
#: differ enough that matching them teaches shape, not pixels); scale = +-fraction of the size
IMAGE_VIEWS_DEFAULT = {"rotation": 15.0, "shift": 0.1, "scale": 0.15}
#: feature vectors: share of features zeroed per row, std of the added noise (standardised units)
TABULAR_VIEWS_DEFAULT = {"mask": 0.2, "noise": 0.1}


def _check_image_ranges(ranges: dict[str, float], what: str) -> dict[str, float]:
    if not (
        0 <= ranges["rotation"] <= 180
        and 0 <= ranges["shift"] < 0.5
        and 0 <= ranges.get("scale", 0.0) < 1
    ):
        raise ValueError(
            f"{what} ranges {ranges} out of range: rotation in [0, 180] degrees, shift in "
            "[0, 0.5), scale in [0, 1)"
        )
    return ranges


def _merge(given: dict[str, float], defaults: dict[str, float], what: str) -> dict[str, float]:
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"{what} has unknown keys {sorted(unknown)}; valid: {sorted(defaults)}")
    return {**defaults, **{k: float(v) for k, v in given.items()}}


def augment_ranges(augment: bool | dict[str, float] | None, ndim: int) -> dict[str, float] | None:
    """Validated ranges of the supervised ``augment`` option (None: off); images only."""
    if augment is False or augment is None:
        return None
    if ndim == 2:
        raise ValueError(
            "augment applies to images (N, H, W) / (N, C, H, W), not to feature "
            "vectors; pass augment=False"
        )
    if isinstance(augment, dict):
        unknown = set(augment) - set(IMAGE_AUGMENT_DEFAULT)
        if unknown:
            raise ValueError(
                f"augment has unknown keys {sorted(unknown)}; valid: "
                "'rotation' (degrees), 'shift' (fraction of the size)"
            )
        ranges = {**IMAGE_AUGMENT_DEFAULT, **{k: float(v) for k, v in augment.items()}}
    elif augment is True:
        ranges = dict(IMAGE_AUGMENT_DEFAULT)
    else:
        raise ValueError(f"augment={augment!r}; use False, True or a dict of ranges")
    return _check_image_ranges(ranges, "augment")


def view_ranges(views: dict[str, float] | None, kind: str) -> dict[str, float]:
    """Validated ranges of the two views of the label-free objective for ``kind`` "image" or
    "vector" (None: the defaults above)."""
    if kind == "image":
        r = _merge(views or {}, IMAGE_VIEWS_DEFAULT, "views")
        return _check_image_ranges(r, "views")
    r = _merge(views or {}, TABULAR_VIEWS_DEFAULT, "views")
    if not (0 <= r["mask"] < 1 and r["noise"] >= 0) or (r["mask"] == 0 and r["noise"] == 0):
        raise ValueError(
            f"views ranges {r} out of range: mask in [0, 1), noise >= 0, not both 0 (two "
            "identical views teach nothing)"
        )
    return r


def affine_views(
    x: torch.Tensor, gen: torch.Generator, rotation: float, shift: float, scale: float = 0.0
) -> torch.Tensor:
    """Random rotation (+-``rotation`` degrees), translation (+-``shift`` of the size) and zoom
    (factor in [1 - scale, 1 + scale]) per image of ``x`` ``(B, C, H, W)``; same shape out.

    ``scale = 0`` draws no zoom numbers, so the supervised augmentation stream is unchanged."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotation)
    # affine_grid works in [-1, 1] coordinates: a shift of f of the size is 2 f there
    off = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * shift)
    cos, sin = torch.cos(ang), torch.sin(ang)
    if scale > 0:
        # the grid maps output to input coordinates: dividing by the zoom enlarges the image
        zoom = 1.0 + (torch.rand(n, generator=gen) * 2 - 1) * scale
        cos, sin = cos / zoom, sin / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, off[:, 0]], 1), torch.stack([sin, cos, off[:, 1]], 1)], 1
    ).to(x.device, x.dtype)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def tabular_views(x: torch.Tensor, gen: torch.Generator, mask: float, noise: float) -> torch.Tensor:
    """Standardised rows ``x`` ``(B, D)`` with each feature zeroed with probability ``mask`` and
    N(0, ``noise``^2) added; same shape out."""
    keep = (torch.rand(x.shape, generator=gen) >= mask).to(x.device, x.dtype)
    eps = torch.randn(x.shape, generator=gen).to(x.device, x.dtype) * noise
    return x * keep + eps


def make_views(
    x: torch.Tensor, gen: torch.Generator, kind: str, ranges: dict[str, float]
) -> torch.Tensor:
    """One random view of the batch ``x`` for preprocessing ``kind`` ("image" or "vector")."""
    if kind == "image":
        return affine_views(x, gen, **ranges)
    return tabular_views(x, gen, **ranges)
