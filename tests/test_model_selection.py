"""sqflow.model_selection.select_n_clusters: K from the data, on small real blob sets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from sqflow.model_selection import KSelection, select_n_clusters

FAST = {"sample_size": 1500, "eval_size": 500, "max_iter": 4}


@pytest.mark.parametrize(
    ("k", "d", "std", "seed"),
    [(4, 2, 0.6, 0), (7, 6, 1.0, 1), (11, 10, 1.2, 2)],
)
def test_finds_the_number_of_separated_blobs(k, d, std, seed) -> None:
    X, _ = make_blobs(4000, n_features=d, centers=k, cluster_std=std, random_state=seed)
    sel = select_n_clusters(X, k_range=(2, 12), random_state=0, **FAST)
    assert isinstance(sel, KSelection)
    assert sel.n_clusters == k, sel.as_dict()
    assert sel.k_values == list(range(2, 13))
    assert len(sel.scores) == len(sel.objectives) == len(sel.k_values)
    assert sel.scores[sel.k_values.index(k)] == max(sel.scores)
    # F_r falls (up to SQ's noise) as centers are added: the curve is not flat
    assert sel.objectives[-1] < 0.5 * sel.objectives[0]


def test_same_seed_same_curve_other_seed_other_samples() -> None:
    X, _ = make_blobs(3000, n_features=3, centers=5, cluster_std=1.5, random_state=3)
    a = select_n_clusters(X, k_range=(2, 5), random_state=7, **FAST)
    b = select_n_clusters(X, k_range=(2, 5), random_state=7, **FAST)
    c = select_n_clusters(X, k_range=(2, 5), random_state=8, **FAST)
    assert a.as_dict() == b.as_dict()
    assert a.scores != c.scores
    rs = np.random.RandomState(7)
    state = rs.get_state()[1].copy()
    select_n_clusters(X, k_range=(2, 3), random_state=rs, **FAST)
    np.testing.assert_array_equal(rs.get_state()[1], state)  # the caller's RandomState is copied


def test_cost_is_bounded_by_the_samples_and_chunked_input_works(tmp_path) -> None:
    zarr = pytest.importorskip("zarr")
    X, _ = make_blobs(30_000, n_features=4, centers=3, cluster_std=0.8, random_state=5)
    z = zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(4096, 4), dtype="f8")
    z[:] = X
    sel = select_n_clusters(z, k_range=(2, 5), random_state=0, **FAST)
    assert (sel.n_fit, sel.n_eval) == (1500, 500)
    assert sel.n_clusters == 3
    # the same rows are drawn from the store as from the array it holds
    assert select_n_clusters(X, k_range=(2, 5), random_state=0, **FAST).as_dict() == sel.as_dict()


def test_small_data_is_split_between_fit_and_held_out_rows() -> None:
    X, _ = make_blobs(260, n_features=2, centers=3, cluster_std=0.5, random_state=0)
    sel = select_n_clusters(X, k_range=(2, 5), random_state=0, **FAST)
    assert sel.n_fit + sel.n_eval == 260 and sel.n_fit == 195  # 260 * 1500 / (1500 + 500)
    assert sel.n_clusters == 3


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"k_range": (1, 5)}, "k_range"),
        ({"k_range": (6, 4)}, "k_range"),
        ({"k_range": 5}, "k_range"),
        ({"k_range": (2.0, 5)}, "k_range"),
        ({"sample_size": 0}, "sample_size"),
        ({"eval_size": -3}, "eval_size"),
        ({"n_init": 0}, "n_init"),
        ({"n_clusters": 3}, "n_clusters"),
        ({"criterion": "elbow"}, "criterion"),
        ({"k_range": (2, 200)}, "too few"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, needle) -> None:
    X, _ = make_blobs(300, n_features=2, centers=3, random_state=0)
    with pytest.raises(ValueError, match=needle):
        select_n_clusters(X, **{"random_state": 0, **kwargs})


def test_bad_data_is_refused() -> None:
    X, _ = make_blobs(300, n_features=2, centers=3, random_state=0)
    X[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        select_n_clusters(X, k_range=(2, 4), random_state=0)
    with pytest.raises(ValueError, match="2-D"):
        select_n_clusters(np.zeros(50), k_range=(2, 4))


def test_report_page_shows_the_criterion_curve() -> None:
    from sqflow import StochasticQuantization
    from sqflow.report import compute_report
    from sqflow.report.render import render_html

    X, _ = make_blobs(900, n_features=2, centers=3, cluster_std=0.5, random_state=4)
    sel = select_n_clusters(X, k_range=(2, 6), random_state=0, **FAST)
    assert sel.n_clusters == 3
    est = StochasticQuantization(sel.n_clusters, random_state=0, max_iter=3).fit(X)
    cid = est.predict(X)
    data = compute_report(
        "auto-k",
        embeddings=X,
        cluster_ids=cid,
        distances=np.linalg.norm(X - est.cluster_centers_[cid], axis=1),
        centers=est.cluster_centers_,
        sample_ids=[f"s{i}" for i in range(len(X))],
    )
    page = render_html(data, embeddings=X, k_selection=sel.as_dict())
    assert 'data-field="k_selected">3<' in page
    assert 'alt="choice of the number of clusters" src="data:image/png;base64,' in page
    assert "from 2 to 6" in page and "calinski-harabasz" in page
    plain = render_html(data, embeddings=X)
    assert "k_selected" not in plain and "choice of the number of clusters" not in plain
