"""The compiled nearest-center search against a float64 brute force, the convergence warning
of a fit that stopped on a noisy pass (momentum/NAG at high rank), and the kernel's row order
(rows taken through a permutation = the rows gathered first, bit for bit)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning

from sqflow import StochasticQuantization
from sqflow._kernels import _nearest_center, _nearest_row


def _brute(z, centers):
    d2 = ((centers - z) ** 2).sum(axis=1)
    return int(np.argmin(d2)), d2  # np.argmin: first index of the minimum


@pytest.mark.parametrize("d, K", [(3, 10), (8, 10), (16, 64), (16, 70), (33, 17)])
def test_nearest_center_is_the_brute_force_argmin(d, K):
    rng = np.random.default_rng(d * 100 + K)
    centers = rng.normal(size=(K, d))
    cT = np.ascontiguousarray(centers.T)
    dist2 = np.empty(K)
    for z in rng.normal(size=(200, d)) * 2.0:
        want, d2 = _brute(z, centers)
        for best, best_d2 in (_nearest_center(z, cT, dist2), _nearest_row(z, centers)):
            assert best == want
            assert best_d2 == pytest.approx(d2[want], rel=1e-12)


@pytest.mark.parametrize("d, K", [(3, 10), (16, 64)])
def test_ties_go_to_the_lowest_index_and_both_paths_agree_bit_for_bit(d, K):
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(K, d))
    centers[K - 1] = centers[5]  # an exact tie, the later copy must lose
    centers[K // 2] = centers[5]
    cT = np.ascontiguousarray(centers.T)
    dist2 = np.empty(K)
    z = centers[5] + 1e-3
    assert _nearest_center(z, cT, dist2)[0] == 5
    assert _nearest_row(z, centers)[0] == 5
    # the column path (d >= 8 in a fit) and the row path (d < 8) sum the features in the same
    # order: a fit's path does not depend on which search ran
    for z in rng.normal(size=(100, d)):
        assert _nearest_center(z, cT, dist2) == _nearest_row(z, centers)


def test_an_infinite_distance_is_never_nearest_unless_all_are():
    centers = np.array([[np.inf] * 16] + [[float(k)] * 16 for k in range(1, 20)])
    cT = np.ascontiguousarray(centers.T)
    best, d2 = _nearest_center(np.zeros(16), cT, np.empty(20))
    assert (best, d2) == (1, 16.0)


@pytest.fixture(scope="module")
def blobs_r6():
    X, _ = make_blobs(3000, n_features=3, centers=4, cluster_std=0.6, random_state=1)
    km = KMeans(4, n_init=10, random_state=0).fit(X).cluster_centers_
    d2 = ((X[:, None, :] - km[None]) ** 2).sum(-1).min(axis=1)
    return X, float(np.mean(d2**3.0))  # F_6 at the KMeans centers


def _fit(X, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = StochasticQuantization(4, rank=6.0, **kw).fit(X)
    return est, [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("optimizer", ["momentum", "nag"])
@pytest.mark.parametrize("seed", [0, 1])
def test_momentum_at_rank_6_converges_or_warns_naming_the_cure(optimizer, seed, blobs_r6):
    """The issue's case: momentum/NAG at r = 6 stopped about 5 % above F_6 at the KMeans
    centers with no warning (a rise of the noisy pass estimate stopped a descent still
    falling 1-3 % per pass). Now: within 1 %, or a warning that names the cure, and the cure
    it names works."""
    X, reference = blobs_r6
    est, warned = _fit(X, optimizer=optimizer, random_state=seed)
    assert np.all(np.isfinite(est.cluster_centers_))
    if est.objective_ > 1.01 * reference:
        assert warned, f"{est.objective_ / reference:.4f}x F_6 at the KMeans centers, no warning"
        assert "lower learning_rate" in warned[0] and "try 0.0001" in warned[0]
        cured, _ = _fit(X, optimizer=optimizer, random_state=seed, learning_rate=1e-4)
        assert cured.objective_ <= 1.01 * reference


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_steady_optimizers_at_rank_6_reach_the_reference_without_that_warning(optimizer, blobs_r6):
    X, reference = blobs_r6
    for seed in (0, 1):
        est, warned = _fit(X, optimizer=optimizer, random_state=seed)
        assert est.objective_ <= 1.01 * reference
        assert not [w for w in warned if w.startswith("SQ stopped after pass")]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nag", "adagrad", "rmsprop", "adam"])
@pytest.mark.parametrize("K, batch_size", [(5, 1), (20, 1), (20, 8)])
def test_fits_with_many_features_match_the_float64_reference(optimizer, K, batch_size):
    """d = 12: the vectorised search (features in registers; for K >= 16 the integer argmin)
    inside Algorithm 1 and the mini-batch rule, step by step against the plain reference."""
    from tests.sq_reference import ReferenceSQ

    X, _ = make_blobs(600, n_features=12, centers=K, cluster_std=1.5, random_state=K)
    init = X[:K] + 0.3
    lr = {"sgd": 0.02, "momentum": 0.01, "nag": 0.01}.get(optimizer, 0.05)
    ref = ReferenceSQ(init, optimizer, lr, r=3.0, t0=150.0, project=True)
    if batch_size == 1:
        for x in X:
            ref.step(x)
    else:
        for start in range(0, len(X), batch_size):
            ref.batch_step(X[start : start + batch_size])
    est = StochasticQuantization(
        K,
        init=init,
        optimizer=optimizer,
        learning_rate=lr,
        rank=3.0,
        step_offset=150.0,
        batch_size=batch_size,
        max_iter=1,
        tol=0.0,
        shuffle=False,
        scale=None,
        projection="bbox",
    ).fit(X)
    np.testing.assert_allclose(est.cluster_centers_, ref.centers, rtol=1e-9, atol=1e-11)
    assert not np.allclose(ref.centers, init)  # the comparison is not vacuous


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nag", "adagrad", "rmsprop", "adam"])
@pytest.mark.parametrize("batch_size", [1, 7])
@pytest.mark.parametrize("d, K", [(3, 5), (16, 20)])
def test_rows_taken_in_an_order_equal_the_gathered_rows_bit_for_bit(optimizer, batch_size, d, K):
    """``sq_steps(rows=perm)`` (the distributed tasks' path: no permuted copy of the block)
    takes the same steps as the rows and weights gathered in that order first."""
    from sqflow.distributed import _steps
    from sqflow.optimizers import OptimizerState

    rng = np.random.default_rng(d + K + batch_size)
    X = (rng.normal(size=(1000, d)) * 2).astype(np.float32)
    w = rng.random(1000)
    w[::9] = 0.0
    perm = np.random.RandomState(3).permutation(1000).astype(np.int64)
    est = StochasticQuantization(K, optimizer=optimizer, batch_size=batch_size, scale=1.0)
    args = est._kernel_args(est._check_params(d), 1.0)
    start = OptimizerState.start(X[:K].astype(np.float64), optimizer)
    for weights in (None, w):
        got, want = start.copy(), start.copy()
        keep_got, keep_want = (np.zeros((4, K, d)) for _ in range(2))
        keep_got[0] = keep_got[3] = keep_want[0] = keep_want[3] = 1.0
        out_got = _steps(X, got, args, keep_got, weights, rows=perm)
        gathered_w = None if weights is None else np.ascontiguousarray(weights[perm])
        out_want = _steps(np.ascontiguousarray(X[perm]), want, args, keep_want, gathered_w)
        assert out_got == out_want and got.t == want.t
        for a, b in ((got.centers, want.centers), (got.m, want.m), (got.v, want.v)):
            assert a.tobytes() == b.tobytes()
        assert np.array_equal(got.count, want.count)
        assert keep_got.tobytes() == keep_want.tobytes()
