"""Random views of a batch of time series: jitter, scaling, time shift and window crop.

Inputs are preprocessed series ``(B, C, T)`` (standardised per channel, so 0 is the training
mean and noise is in units of the channel's std). Each series gets its own draw; every random
number comes from a CPU ``torch.Generator`` passed in by the caller, so a seed gives the same
views on any device (the image views of :mod:`.augment` follow the same rule).

* jitter: add N(0, ``jitter``^2) noise to every value (sensor noise);
* scaling: multiply each channel by a factor from N(1, ``scaling``^2) (gain drift);
* shift: move the series by up to +-``shift`` x T steps, edge values repeated (trigger jitter);
* crop: take a random window of (1 - u x ``crop``) x T steps, u ~ U(0, 1), and stretch it back
  to T steps by linear interpolation ("window slicing", Le Guennec et al. 2016).

These are the transformations of the time-series contrastive literature (Um et al. 2017,
TS-TCC, Eldele et al. 2021) that keep the class of a sensor or speech series.
"""

from __future__ import annotations

import torch

__all__ = [
    "SIGNAL_AUGMENT_DEFAULT",
    "SIGNAL_VIEWS_DEFAULT",
    "signal_ranges",
    "signal_views",
]

#: ranges of ``train_encoder(augment=True)`` on time series (labeled triplet batches): mild
SIGNAL_AUGMENT_DEFAULT = {"jitter": 0.03, "scaling": 0.1, "shift": 0.05, "crop": 0.1}
#: ranges of the two views of the label-free objective on time series (stronger, so that
#: matching two views teaches the shape of a series, not its exact values)
SIGNAL_VIEWS_DEFAULT = {"jitter": 0.1, "scaling": 0.2, "shift": 0.1, "crop": 0.2}


def signal_ranges(
    given: bool | dict[str, float] | None, defaults: dict[str, float], what: str
) -> dict[str, float] | None:
    """Validated signal ranges: False/None -> None (off), True -> ``defaults``, a dict -> the
    defaults updated by it. ``what`` names the parameter in error messages."""
    if given is False or given is None:
        return None
    if given is True:
        return dict(defaults)
    if not isinstance(given, dict):
        raise ValueError(f"{what}={given!r}; use False, True or a dict of ranges")
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(
            f"{what} has unknown keys {sorted(unknown)} for time series; valid: "
            "'jitter' (std), 'scaling' (std of the gain), 'shift' (fraction of T), "
            "'crop' (largest fraction of T cut away)"
        )
    r = {**defaults, **{k: float(v) for k, v in given.items()}}
    if not (
        r["jitter"] >= 0 and r["scaling"] >= 0 and 0 <= r["shift"] < 0.5 and 0 <= r["crop"] < 1
    ):
        raise ValueError(
            f"{what} ranges {r} out of range: jitter >= 0, scaling >= 0, shift in [0, 0.5), "
            "crop in [0, 1)"
        )
    if not any(r.values()):
        raise ValueError(f"{what} ranges {r} are all 0: two identical views teach nothing")
    return r


def signal_views(
    x: torch.Tensor,
    gen: torch.Generator,
    jitter: float,
    scaling: float,
    shift: float,
    crop: float,
) -> torch.Tensor:
    """One random view of ``x`` ``(B, C, T)``; same shape, dtype and device out."""
    b, c, t = x.shape
    # every number is drawn on the CPU generator first, then moved: device-independent views
    u_len = torch.rand(b, generator=gen)
    u_start = torch.rand(b, generator=gen)
    u_shift = torch.rand(b, generator=gen) * 2 - 1
    gain = 1.0 + torch.randn(b, c, 1, generator=gen) * scaling
    noise = torch.randn(b, c, t, generator=gen) * jitter
    # source position of every output step: window crop (start, length) then a shift
    length = (1.0 - u_len * crop) * (t - 1)  # window span in steps
    start = u_start * ((t - 1) - length)
    steps = torch.arange(t, dtype=torch.float32) / max(t - 1, 1)
    pos = start[:, None] + steps[None, :] * length[:, None] - (u_shift * shift * t)[:, None]
    pos = pos.clamp(0, t - 1)  # shifted-in steps repeat the edge value
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=t - 1)
    w = (pos - lo).to(x.dtype)
    lo_i = lo[:, None, :].expand(b, c, t).to(x.device)
    hi_i = hi[:, None, :].expand(b, c, t).to(x.device)
    w = w[:, None, :].to(x.device)
    out = (1 - w) * x.gather(2, lo_i) + w * x.gather(2, hi_i)
    return out * gain.to(x.device, x.dtype) + noise.to(x.device, x.dtype)
