"""sqflow.seeding: k-means++ (squared distances), random rows, class means."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from sqflow.seeding import class_means, kmeans_plusplus, random_rows, sq_dist_to_nearest


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(3000, n_features=3, centers=4, cluster_std=0.6, random_state=1)
    return X, y


def test_kmeans_plusplus_draws_with_squared_distance():
    X = np.array([[0.0], [1.0], [2.0]])
    rng = np.random.RandomState(0)
    far = sum(
        kmeans_plusplus(X, 2, rng, existing=X[:1], n_local_trials=1)[1, 0] == 2.0
        for _ in range(3000)
    )
    # D^2 weighting: P(far) = 4/5 ; plain distance would give 2/3
    assert abs(far / 3000 - 0.8) < 0.03


def test_kmeans_plusplus_and_random_pick_data_rows(blobs):
    X = blobs[0]
    rng = np.random.RandomState(0)
    for centers in (kmeans_plusplus(X, 4, rng), random_rows(X, 4, rng)):
        assert centers.shape == (4, 3)
        for c in centers:
            assert np.any(np.all(X == c, axis=1))


def test_sq_dist_to_nearest_is_exact_far_from_the_origin(blobs):
    X = blobs[0]
    C = X[:5]
    ref = np.min([((X - c) ** 2).sum(1) for c in C], axis=0)
    np.testing.assert_allclose(sq_dist_to_nearest(X, C), ref, rtol=1e-12)
    offset = 1e8
    got = sq_dist_to_nearest(X + offset, C + offset)
    # the offset coordinates are rounded to 1.5e-8; beyond that no digit may move
    assert np.max(np.abs(np.sqrt(got) - np.sqrt(ref))) < 1e-6


def test_kmeans_plusplus_is_unchanged_by_an_offset(blobs):
    """The seeding's choices depend on distances only, so a shifted copy of the data must pick
    the same rows (the |x|^2 - 2x.c + |c|^2 expansion broke this at an offset of 1e8)."""
    X = blobs[0]
    a = kmeans_plusplus(X, 4, np.random.RandomState(3))
    b = kmeans_plusplus(X + 1e8, 4, np.random.RandomState(3))
    np.testing.assert_allclose(b - 1e8, a, atol=1e-6)
    # and the seeding is good: one center per blob
    y = blobs[1]
    assert len({int(y[np.argmin(((X - c) ** 2).sum(1))]) for c in a}) == 4


def test_class_means_put_each_class_at_its_index_and_seed_missing_ones(blobs):
    X, y = blobs
    sums = np.zeros((5, 3))
    counts = np.zeros(5, dtype=np.int64)
    for c in range(4):
        sums[c] = X[y == c].sum(0)
        counts[c] = (y == c).sum()
    with pytest.warns(UserWarning, match=r"no labeled sample for class\(es\) \[4\]"):
        centers = class_means(sums, counts, X, np.random.RandomState(0))
    for c in range(4):
        np.testing.assert_allclose(centers[c], X[y == c].mean(0))
    assert np.any(np.all(X == centers[4], axis=1))  # the seeded one is a data row
