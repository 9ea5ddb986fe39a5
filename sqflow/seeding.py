"""Initial centers: greedy k-means++ (squared distances), random rows, and class means."""

from __future__ import annotations

import math
import warnings

import numpy as np

from .distances import nearest, sq_distances


def sq_dist_to_nearest(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared distance of every row of X to its nearest row of ``centers`` (float64, (n,)),
    computed from differences (:func:`sqflow.distances.nearest`), exact far from the origin."""
    return nearest(X, centers)[1]


def kmeans_plusplus(
    X: np.ndarray,
    n_clusters: int,
    rng: np.random.RandomState,
    *,
    existing: np.ndarray | None = None,
    n_local_trials: int | None = None,
    sample_weight: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy k-means++ seeding with SQUARED distances (Arthur & Vassilvitskii; as scikit-learn).

    Each new center is the best, by potential (sum of squared distances to the nearest chosen
    center), of ``n_local_trials`` candidates drawn with probability proportional to the squared
    distance to the nearest center chosen so far.

    Parameters
    ----------
    X : ndarray (n_samples, n_features)
        Sample to seed from (a bounded sample when the data are larger than memory).
    n_clusters : int
        Number of centers to return, including ``existing``.
    rng : RandomState
    existing : ndarray (n_existing, n_features), optional
        Centers already fixed (for example class means); seeding continues from them.
    n_local_trials : int, default ``2 + floor(ln n_clusters)``
    sample_weight : ndarray (n_samples,) of float >= 0, optional
        Row weights: a row is drawn with probability proportional to weight x squared distance
        (the first center proportional to weight) and potentials are weighted sums, as if a
        row of weight w were w repeated rows. None: all 1.

    Returns
    -------
    centers : ndarray (n_clusters, n_features), float64
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    centers = np.empty((n_clusters, X.shape[1]))
    n_done = 0
    if existing is not None and len(existing):
        centers[: len(existing)] = existing
        n_done = len(existing)
        closest = sq_dist_to_nearest(X, centers[:n_done])
    else:
        if sample_weight is None:
            first = rng.randint(n)
        else:
            first = min(int(np.searchsorted(np.cumsum(w), rng.uniform() * w.sum())), n - 1)
        centers[0] = X[first]
        n_done = 1
        closest = sq_dist_to_nearest(X, centers[:1])
    potential = (w * closest).sum()
    for c in range(n_done, n_clusters):
        if potential <= 0.0:
            # every point coincides with a chosen center: any point will do
            candidates = rng.randint(n, size=n_local_trials)
            if sample_weight is not None:  # never a row of weight 0
                candidates = rng.choice(n, size=n_local_trials, p=w / w.sum())
        else:
            cumulative = np.cumsum(w * closest)
            draws = rng.uniform(size=n_local_trials) * cumulative[-1]
            candidates = np.minimum(np.searchsorted(cumulative, draws), n - 1)
        cand = X[candidates]
        d2 = np.minimum(sq_distances(X, cand), closest[:, None])
        pots = d2.sum(axis=0) if sample_weight is None else w @ d2
        best = int(np.argmin(pots))
        centers[c] = cand[best]
        closest = d2[:, best]
        potential = pots[best]
    return centers


def random_rows(
    X: np.ndarray,
    n_clusters: int,
    rng: np.random.RandomState,
    sample_weight: np.ndarray | None = None,
) -> np.ndarray:
    """``n_clusters`` distinct rows of X, chosen uniformly (with ``sample_weight``: with
    probability proportional to the weight, without replacement) (float64)."""
    p = None if sample_weight is None else sample_weight / np.sum(sample_weight)
    idx = rng.choice(X.shape[0], size=n_clusters, replace=False, p=p)
    return np.asarray(X[np.sort(idx)], dtype=np.float64)


def class_means(
    sums: np.ndarray,
    counts: np.ndarray,
    sample: np.ndarray,
    rng: np.random.RandomState,
) -> np.ndarray:
    """Center c = mean of the labeled points of class c (so center index = class).

    Classes without any labeled point get k-means++ centers seeded from ``sample``, continuing
    from the class means, and a warning names them.

    Parameters
    ----------
    sums : ndarray (n_clusters, n_features)
        Per-class sums of the labeled points.
    counts : ndarray (n_clusters,)
        Per-class counts of labeled points.
    sample : ndarray (n, n_features)
        Bounded sample of the data used to seed missing classes.
    """
    n_clusters = sums.shape[0]
    present = counts > 0
    means = sums[present] / counts[present, None]
    if present.all():
        return means.astype(np.float64)
    missing = np.flatnonzero(~present)
    warnings.warn(
        f"init='labels': no labeled sample for class(es) {missing.tolist()}; "
        "those centers are seeded with k-means++ from the data",
        UserWarning,
        stacklevel=3,
    )
    seeded = kmeans_plusplus(sample, n_clusters, rng, existing=means)
    centers = np.empty_like(seeded)
    centers[present] = seeded[: present.sum()]
    centers[missing] = seeded[present.sum() :]
    return centers
