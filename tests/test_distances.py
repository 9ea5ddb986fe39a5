"""sqflow.distances: nearest-center distances from differences, exact far from the origin."""

from __future__ import annotations

import numpy as np
import pytest

from sqflow import StochasticQuantization
from sqflow.distances import (
    check_objective_finite,
    distances,
    nearest,
    nearest_distance,
    sq_distances,
)


def _reference_sq(X, C):
    """float64 squared distances from differences, one center at a time (the slow reference)."""
    X = np.asarray(X, dtype=np.float64)
    return np.stack([((X - c) ** 2).sum(1) for c in np.asarray(C, dtype=np.float64)], axis=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5000, 7)), rng.normal(size=(9, 7))


def test_matrix_and_nearest_match_the_difference_reference(data):
    X, C = data
    ref = _reference_sq(X, C)
    np.testing.assert_allclose(sq_distances(X, C), ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(distances(X, C), np.sqrt(ref), rtol=1e-12, atol=0)
    labels, d2 = nearest(X, C)
    assert labels.dtype == np.int64 and d2.dtype == np.float64
    np.testing.assert_array_equal(labels, ref.argmin(1))
    np.testing.assert_allclose(d2, ref.min(1), rtol=1e-12)
    lab2, dist = nearest_distance(X, C)
    np.testing.assert_array_equal(lab2, labels)
    np.testing.assert_allclose(dist, np.sqrt(d2))


def test_float32_rows_and_integer_rows_are_read_as_float64(data):
    X, C = data
    x32 = X.astype(np.float32)
    np.testing.assert_allclose(sq_distances(x32, C), _reference_sq(x32, C), rtol=1e-12)
    xi = np.arange(12).reshape(6, 2)
    np.testing.assert_allclose(
        sq_distances(xi, [[0, 0], [5, 5]]), _reference_sq(xi, [[0, 0], [5, 5]])
    )


def test_ties_go_to_the_lowest_center_index():
    labels, d2 = nearest(np.array([[0.0, 0.0]]), np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
    assert labels.tolist() == [0] and d2.tolist() == [1.0]


@pytest.mark.parametrize("offset", [1e4, 1e8])
def test_offset_changes_no_digit_that_matters(data, offset):
    """Issue 15: the expansion |x|^2 - 2x.c + |c|^2 had an absolute error of 2.6 at offset 1e8."""
    X, C = data
    Xo, Co = X + offset, C + offset
    # reference: differences in float64 of the offset data (the subtraction X_i - C_k is exact
    # to the ulp of the offset, the only error any float64 method can avoid)
    ref = np.sqrt(_reference_sq(Xo, Co))
    got = distances(Xo, Co)
    ulp = np.spacing(offset)  # the rounding already in the offset coordinates
    assert np.max(np.abs(got - ref)) <= 1e-12 * ref.max() + 1e-9
    assert np.max(np.abs(got - np.sqrt(_reference_sq(X, C)))) < 10 * ulp * np.sqrt(X.shape[1])
    lab, d2 = nearest(Xo, Co)
    np.testing.assert_array_equal(lab, ref.argmin(1))


def test_transform_on_offset_data_matches_float64_difference_reference(data):
    X, _ = data
    est = StochasticQuantization(5, random_state=0, max_iter=3).fit(X)
    offset = 1e8
    moved = StochasticQuantization(5)
    moved.__dict__.update(est.__dict__)
    moved.cluster_centers_ = est.cluster_centers_ + offset
    got = moved.transform(X + offset)
    ref = np.sqrt(_reference_sq(X + offset, est.cluster_centers_ + offset))
    assert np.max(np.abs(got - ref)) < 1e-6  # was 2.6 with the expansion
    np.testing.assert_allclose(got, est.transform(X), atol=1e-6)
    np.testing.assert_array_equal(moved.predict(X + offset), est.predict(X))


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match=r"X must be 2-D"):
        nearest(np.zeros(3), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"centers must be \(n_centers >= 1, 3\)"):
        sq_distances(np.zeros((4, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"centers must be"):
        nearest(np.zeros((4, 3)), np.zeros((0, 3)))


def test_empty_rows_give_empty_results():
    assert sq_distances(np.zeros((0, 3)), np.zeros((2, 3))).shape == (0, 2)
    lab, d2 = nearest(np.zeros((0, 3)), np.zeros((2, 3)))
    assert lab.shape == d2.shape == (0,)


def test_overflowing_inputs_are_refused_before_compiled_code():
    X = np.random.default_rng(1).normal(size=(200, 4))
    check_objective_finite(X, 2.0)  # ordinary data pass
    check_objective_finite(X * 1e100, 2.0)  # squares up to 1e202, summed: still finite
    with pytest.raises(ValueError, match="Rescale X"):
        check_objective_finite(X * 1e150, 2.0)  # 200 squares of ~1e302 overflow
    with pytest.raises(ValueError, match="Rescale X"):
        check_objective_finite(X[:2] * 1e100, 2.0, n_rows=10**110)  # a sample of huge data
    with pytest.raises(ValueError, match="power 10"):
        check_objective_finite(X * 1e40, 10.0)
    # issue 15: fit(X * 1e150) died inside numba with a TypingError
    with pytest.raises(ValueError, match="objective would overflow. Rescale X"):
        StochasticQuantization(3, random_state=0).fit(X * 1e150)
