"""Online semi-hard triplet mining inside a batch (PAPER.md section 4, FaceNet style).

For every ordered positive pair (anchor ``a``, positive ``p``): same label, ``a != p``, both
labeled (label >= 0). The negative ``n`` is chosen among the labeled rows with a different label:

* **semi-hard** (the paper's rule): the closest negative that is still strictly farther from the
  anchor than the positive, ``d(a, n) > d(a, p)``. When that negative is also beyond the margin,
  ``d(a, n) >= d(a, p) + margin``, every farther negative is too, and the triplet's loss is zero
  whichever is chosen, so "within the margin" needs no separate test.
* **fallback** when no negative is farther than the positive (all negatives are "hard"): the
  *farthest* negative, i.e. the least hard one. Picking the hardest (closest) negative instead is
  known to collapse embeddings early in training (Schroff et al. 2015); the least hard one gives
  the smallest, most stable violation. (Same choice as TensorFlow Addons' semi-hard loss.)

Rows with label -1 (unlabeled) are never anchors, positives or negatives. A pair whose anchor has
no negative at all in the batch (a batch with a single class) produces no triplet.

Distances are Euclidean (not squared), as in the paper.
"""

from __future__ import annotations

import torch

__all__ = ["pairwise_distances", "semi_hard_triplets", "semi_hard_triplet_loss"]

_EPS = 1e-12


def pairwise_distances(z: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix ``(B, B)`` of embeddings ``z`` of shape ``(B, D)``.

    The square root is taken of a value clamped at 1e-12 so that the gradient stays finite when
    two embeddings coincide (``torch.cdist`` returns NaN gradients there on some builds).
    """
    diff = z.unsqueeze(1) - z.unsqueeze(0)
    sq = (diff * diff).sum(-1)
    return torch.sqrt(sq.clamp_min(_EPS))


@torch.no_grad()
def semi_hard_triplets(
    dist: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mine one triplet per valid positive pair.

    Parameters
    ----------
    dist:
        ``(B, B)`` float distance matrix (see :func:`pairwise_distances`).
    labels:
        ``(B,)`` integer labels; -1 marks an unlabeled row.

    Returns
    -------
    anchors, positives, negatives:
        ``int64`` index tensors of equal length T (T may be 0). For every t:
        ``labels[a] == labels[p] >= 0``, ``a != p``, ``labels[n] >= 0``, ``labels[n] != labels[a]``.
    """
    b = dist.shape[0]
    if dist.shape != (b, b) or labels.shape != (b,):
        raise ValueError(
            f"dist must be (B, B) and labels (B,); got {tuple(dist.shape)} and {tuple(labels.shape)}"
        )
    device = dist.device
    labels = labels.to(device)
    labeled = labels >= 0
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    both = labeled.unsqueeze(0) & labeled.unsqueeze(1)
    eye = torch.eye(b, dtype=torch.bool, device=device)
    pos_mask = same & both & ~eye
    neg_mask = ~same & both

    # Per anchor, negative distances sorted ascending with non-negatives pushed to +inf, so one
    # searchsorted finds, for every (a, p), the first negative strictly farther than d(a, p).
    neg_d = torch.where(neg_mask, dist, torch.full_like(dist, float("inf")))
    sorted_d, order = torch.sort(neg_d, dim=1)
    n_neg = neg_mask.sum(dim=1)  # (B,)
    pos_idx = torch.searchsorted(sorted_d.contiguous(), dist.contiguous(), right=True)  # (B, B)
    has_semi = pos_idx < n_neg.unsqueeze(1)
    fallback = (n_neg - 1).clamp_min(0).unsqueeze(1).expand(b, b)  # farthest negative
    rank = torch.where(has_semi, pos_idx, fallback)
    neg_choice = torch.gather(order, 1, rank)  # (B, B): negative index for pair (a, p)

    valid = pos_mask & (n_neg > 0).unsqueeze(1)
    a, p = valid.nonzero(as_tuple=True)
    n = neg_choice[a, p]
    return a, p, n


def semi_hard_triplet_loss(
    z: torch.Tensor, labels: torch.Tensor, margin: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean triplet loss ``max(0, d(a,p) - d(a,n) + margin)`` over the mined triplets.

    Returns the loss (a scalar tensor with gradient; 0 when no triplet exists) and statistics:
    ``n_triplets`` and ``fraction_active`` (share of triplets with a positive loss).
    """
    dist = pairwise_distances(z)
    a, p, n = semi_hard_triplets(dist.detach(), labels)
    if a.numel() == 0:
        return z.sum() * 0.0, {"n_triplets": 0, "fraction_active": 0.0}
    losses = torch.relu(dist[a, p] - dist[a, n] + margin)
    active = float((losses > 0).float().mean())
    return losses.mean(), {"n_triplets": int(a.numel()), "fraction_active": active}
