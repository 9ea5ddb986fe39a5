"""Self-training: pseudo-labels from confident SQ assignments of the current embedding.

(The other source of pseudo-labels, ``source="manifold"``, is the input-space teacher of
:mod:`.teacher`; this module validates the options of both.)

Every epoch from ``start_epoch`` on, the training rows are embedded, an SQ model is fitted on
them (:class:`sqflow.StochasticQuantization`, the estimator the pipeline clusters with), and the
unlabeled rows that sit clearly closer to their nearest center than to the second nearest get
that center's class as a pseudo-label; the triplet loss then treats them like labeled rows. The
pseudo-labels are recomputed from scratch each time, so an early mistake is not locked in.

* Some labels (semi-supervised): centers are seeded with the class means of the labeled rows
  (``init="labels"``), so center c is class c and a pseudo-label is a class id.
* No label (label-free): ``n_clusters`` centers from k-means++; a pseudo-label is a cluster id,
  which is all the triplet loss needs (same id = pull together, different ids = push apart).

Confidence is the distance ratio ``d1 / d2`` (nearest over second-nearest center, 0 = certain,
1 = on the boundary). Per center the ``keep`` share of its unlabeled rows with the lowest ratio
is kept, so every cluster contributes and a large cluster cannot swamp the triplet batches.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["PSEUDO_LABELS_DEFAULT", "pseudo_label_ranges", "assign_pseudo_labels"]

#: source: "embedding" (SQ assignments of the encoder's own embedding, every epoch from
#: start_epoch on) or "manifold" (:mod:`.teacher`: once, before training, from the inputs);
#: start_epoch: "embedding" only, epochs of the plain objective before the first assignment (the
#: embedding must first carry some structure); keep: share of each center's unlabeled rows that is
#: kept; n_clusters: label-free only, number of centers (None: required when no label exists);
#: teacher: "manifold" only, overrides of :data:`.teacher.TEACHER_DEFAULT`; every: "manifold"
#: only, None = teach once, N = teach again every N epochs after start_epoch (on the features the
#: pseudo-labels have trained since)
PSEUDO_LABELS_DEFAULT: dict[str, Any] = {
    "source": "embedding",
    "start_epoch": 5,
    "keep": 0.5,
    "n_clusters": None,
    "teacher": None,
    "every": None,
}
SOURCES = ("embedding", "manifold")


def pseudo_label_ranges(option: bool | dict[str, Any] | None) -> dict[str, Any] | None:
    """Validated settings of ``train_encoder(pseudo_labels=...)``; None when off."""
    if option is None or option is False:
        return None
    if option is True:
        return dict(PSEUDO_LABELS_DEFAULT)
    if not isinstance(option, dict):
        raise ValueError(f"pseudo_labels={option!r}; use None/False, True or a dict of settings")
    unknown = set(option) - set(PSEUDO_LABELS_DEFAULT)
    if unknown:
        raise ValueError(
            f"pseudo_labels has unknown keys {sorted(unknown)}; valid: "
            f"{sorted(PSEUDO_LABELS_DEFAULT)}"
        )
    r = {**PSEUDO_LABELS_DEFAULT, **option}
    if r["source"] not in SOURCES:
        raise ValueError(f"pseudo_labels source={r['source']!r}; valid: {list(SOURCES)}")
    if r["source"] == "manifold":
        from .teacher import teacher_ranges

        r["teacher"] = teacher_ranges(r["teacher"])
    elif r["teacher"] is not None:
        raise ValueError("pseudo_labels teacher settings apply to source='manifold' only")
    every = r["every"]
    if every is not None:
        if r["source"] != "manifold":
            raise ValueError(
                "pseudo_labels every applies to source='manifold' only (the 'embedding' source "
                "already relabels every epoch)"
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"pseudo_labels every={every!r} must be None or an int >= 1")
    if not (isinstance(r["start_epoch"], int) and r["start_epoch"] >= 1):
        raise ValueError(f"pseudo_labels start_epoch={r['start_epoch']!r} must be an int >= 1")
    if not 0 < float(r["keep"]) <= 1:
        raise ValueError(f"pseudo_labels keep={r['keep']!r} must lie in (0, 1]")
    k = r["n_clusters"]
    if k is not None and not (isinstance(k, int) and k >= 2):
        raise ValueError(f"pseudo_labels n_clusters={k!r} must be None or an int >= 2")
    r["keep"] = float(r["keep"])
    return r


def assign_pseudo_labels(
    z: np.ndarray,
    labels: np.ndarray,
    *,
    keep: float,
    n_clusters: int | None = None,
    seed: int = 0,
    seed_labels: np.ndarray | None = None,
) -> np.ndarray:
    """Labels plus pseudo-labels for embedded training rows.

    Parameters
    ----------
    z:
        ``(N, d)`` embeddings of the training rows (no augmentation).
    labels:
        ``(N,)`` class ids >= 0, -1 for unlabeled rows.
    keep:
        Share in (0, 1] of each center's unlabeled rows that get a pseudo-label (the most
        confident ones).
    n_clusters:
        Label-free only (every label -1): the number of centers. Ignored with labels (one
        center per class).
    seed:
        ``random_state`` of the SQ fit.
    seed_labels:
        Label-free only: the previous pseudo-labels of the same rows (-1 = none). The centers
        start at their cluster means instead of k-means++, so cluster ids and the partition
        carry over from one epoch to the next instead of being redrawn (a redrawn partition
        pulls the embedding towards a different target every epoch). Every unlabeled row is
        assigned afresh. Ignored when ``labels`` has labels or a seeded cluster is empty.

    Returns
    -------
    ndarray ``(N,)`` int64: the given labels unchanged, the kept unlabeled rows with the class
    (or, label-free, the cluster id) of their nearest center, -1 for the rest.
    """
    from ..distances import sq_distances
    from ..estimator import ConvergenceWarning, StochasticQuantization

    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    lab = labels >= 0
    with warnings.catch_warnings():
        # three passes are the budget, not a failure: the assignment, not the optimum, matters
        warnings.simplefilter("ignore", ConvergenceWarning)
        if lab.any():
            classes, y = np.unique(labels[lab], return_inverse=True)
            y_all = np.full(len(labels), -1, dtype=np.int64)
            y_all[lab] = y
            est = StochasticQuantization(
                n_clusters=len(classes), init="labels", random_state=seed, max_iter=3
            ).fit(z, y_all)
        elif seed_labels is not None and _seeds_cover(seed_labels, n_clusters):
            classes = np.arange(n_clusters)
            est = StochasticQuantization(
                n_clusters=n_clusters, init="labels", random_state=seed, max_iter=3
            ).fit(z, np.asarray(seed_labels, dtype=np.int64))
        else:
            if n_clusters is None:
                raise ValueError(
                    "pseudo-labels without any label need n_clusters (the number of clusters "
                    "to assign); pass pseudo_labels={'n_clusters': K}"
                )
            classes = np.arange(n_clusters)
            est = StochasticQuantization(
                n_clusters=n_clusters, init="k-means++", random_state=seed, max_iter=3
            ).fit(z)
    centers = est.cluster_centers_
    d = np.sqrt(sq_distances(z, centers))
    idx = d.argmin(axis=1)
    d1 = d[np.arange(len(z)), idx]
    d[np.arange(len(z)), idx] = np.inf  # the second-nearest center is what is left
    ratio = d1 / np.maximum(d.min(axis=1), 1e-300)
    out = labels.copy()
    for k in range(len(centers)):
        rows = np.flatnonzero((idx == k) & ~lab)
        if not len(rows):
            continue
        n_keep = int(np.ceil(keep * len(rows)))
        best = rows[np.argsort(ratio[rows], kind="stable")[:n_keep]]
        out[best] = classes[k]
    return out


def _seeds_cover(seed_labels: np.ndarray, n_clusters: int | None) -> bool:
    """True when the seed labels name every cluster 0..n_clusters-1 (and nothing else)."""
    if n_clusters is None:
        return False
    ids = np.unique(np.asarray(seed_labels)[np.asarray(seed_labels) >= 0])
    return len(ids) == n_clusters and bool(np.array_equal(ids, np.arange(n_clusters)))
