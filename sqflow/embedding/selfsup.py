"""Label-free objective: NT-Xent (the normalised temperature-scaled cross-entropy of SimCLR,
Chen et al. 2020) between two random views of the same rows.

For a batch of B rows with views ``z1``, ``z2`` ``(B, D)``: all 2B embeddings are L2-normalised,
every one is asked to pick its partner view among the other 2B - 1 by cosine similarity / T
(softmax cross-entropy). The loss is minimal when the two views of a row agree and different
rows are spread over the unit sphere, which is what SQ then quantizes (on the direction; the
triplet loss of the labeled rows may also use the norm).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["nt_xent_loss"]


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean NT-Xent loss over the 2B anchors of two views ``z1``, ``z2`` ``(B, D)``, B >= 2.

    ``temperature`` T > 0 (SimCLR: 0.1-0.5; lower = sharper, harder negatives). Returns a
    scalar tensor with gradient. Lower bound 0; a random embedding gives about ``log(2B - 1)``.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"views must both be (B, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    b = z1.shape[0]
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    # a row is never its own candidate
    self_mask = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return nn.functional.cross_entropy(sim, partner)
