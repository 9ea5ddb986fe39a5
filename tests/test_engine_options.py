"""Engine options of issue 17: sample_weight, metric="cosine", forgetting, n_clusters="auto"."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr
from sklearn.metrics import adjusted_rand_score

from sqflow import StochasticQuantization


def _sorted(c: np.ndarray) -> np.ndarray:
    return c[np.lexsort(c.T[::-1])]


# ---------------------------------------------------------------- sample_weight
def test_weighted_step_matches_hand_computation():
    """sgd, r = 2, one center, constant step: y <- y - rho * 2 * w * (y - x) (capped at x)."""
    X = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.5]])
    w = np.array([2.0, 0.5, 0.0, 30.0])  # 30 * 0.05 * 2 = 3 > 1: the safeguard stops at x
    lr = 0.05
    est = StochasticQuantization(
        1,
        init=np.zeros((1, 2)),
        learning_rate=lr,
        rank=2.0,
        schedule="constant",
        scale=None,
        shuffle=False,
        max_iter=1,
        projection=None,
    ).fit(X, sample_weight=w)
    y = np.zeros(2)
    for x, wi in zip(X, w):
        y = y - min(lr * 2.0 * wi, 1.0) * (y - x)
    np.testing.assert_allclose(est.cluster_centers_[0], y, rtol=1e-12)
    np.testing.assert_allclose(est.cluster_centers_[0], X[3])  # the last, capped step
    assert est.n_steps_ == 3  # the row of weight 0 took no step
    d_r = np.sum((X - y) ** 2, axis=1)
    assert est.objective_ == pytest.approx(np.dot(w, d_r) / w.sum(), rel=1e-12)
    assert est.score(X, sample_weight=w) == pytest.approx(-est.objective_, rel=1e-12)
    assert est.score(X) == pytest.approx(-d_r.mean(), rel=1e-12)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_zero_weight_is_removal_and_unit_weight_is_no_weight(batch_size):
    """Rows of weight 0 are removed exactly (the step schedule's clock included), and weights of
    1 give the unweighted fit bit for bit."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 3))
    w = np.ones(400)
    w[rng.random(400) < 0.3] = 0.0
    kw = dict(
        init=X[:3].copy(),
        scale=None,
        shuffle=False,
        max_iter=2,
        tol=0,
        batch_size=batch_size,
        rank=3.0,
        learning_rate=0.01,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = StochasticQuantization(3, **kw).fit(X, sample_weight=w)
        kept = X[w > 0]
        b = StochasticQuantization(3, **{**kw, "init": X[:3].copy()}).fit(kept)
    if batch_size == 1:
        # a batch keeps its slots, so only Algorithm 1 equals the removal bit for bit
        np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
        assert a.n_steps_ == b.n_steps_
    ones = StochasticQuantization(3, random_state=0).fit(X, sample_weight=np.ones(400))
    none = StochasticQuantization(3, random_state=0).fit(X)
    np.testing.assert_array_equal(ones.cluster_centers_, none.cluster_centers_)


def test_weights_match_repeated_rows_in_expectation():
    """The statistical form of scikit-learn's check_sample_weight_equivalence (which compares
    one weighted and one repeated fit to 1e-7 and so cannot hold for an order-dependent
    stochastic method; scikit-learn marks it expected-to-fail for KMeans and MiniBatchKMeans).
    Integer weights that skew every blob: over seeds, the weighted fits and the fits on the
    repeated rows both find the weighted blob means, far from the unweighted ones."""
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    lab = np.repeat(np.arange(3), 150)
    X = means[lab] + rng.normal(size=(450, 2))
    w = np.where(X[:, 0] > means[lab, 0], 5, 1)
    w[rng.random(450) < 0.1] = 0
    target = _sorted(
        np.array([np.average(X[lab == k], axis=0, weights=w[lab == k]) for k in range(3)])
    )
    plain = _sorted(np.array([X[lab == k].mean(axis=0) for k in range(3)]))
    assert np.abs(target - plain).max() > 0.5  # weights that are ignored would be seen
    weighted, repeated = [], []
    for seed in range(6):
        kw = dict(rank=2.0, learning_rate=0.01, max_iter=20, tol=0, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weighted.append(
                _sorted(StochasticQuantization(3, **kw).fit(X, sample_weight=w).cluster_centers_)
            )
            repeated.append(
                _sorted(
                    StochasticQuantization(3, **kw).fit(np.repeat(X, w, axis=0)).cluster_centers_
                )
            )
    # the median over seeds: a start stuck with two centers in one blob is not about weights
    mw, mr = np.median(weighted, axis=0), np.median(repeated, axis=0)
    assert np.abs(mw - target).max() < 0.15
    assert np.abs(mr - target).max() < 0.15
    assert np.abs(mw - mr).max() < 0.15


def test_bad_sample_weight_is_refused_by_name(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 2))
    est = StochasticQuantization(2, random_state=0)
    with pytest.raises(ValueError, match="[Nn]egative|non-negative"):
        est.fit(X, sample_weight=-np.ones(50))
    with pytest.raises(ValueError, match="non-zero"):
        est.fit(X, sample_weight=np.zeros(50))
    with pytest.raises(ValueError, match="rows with sample_weight > 0=1"):
        est.fit(X, sample_weight=np.eye(50)[0])
    import dask.array as da

    with pytest.raises(ValueError, match="not supported with a Dask array"):
        est.fit(da.from_array(X, chunks=(10, 2)), sample_weight=np.ones(50))
    z = zarr.open_array(
        str(tmp_path / "x.zarr"), mode="w", shape=X.shape, chunks=(10, 2), dtype="f8"
    )
    z[:] = X
    with pytest.raises(ValueError, match="sample_weight.shape"):
        est.fit(z, sample_weight=np.ones(49))
    assert not hasattr(est, "cluster_centers_")


@pytest.mark.parametrize("batch_size", [1, 5])
def test_weights_on_zarr_are_the_weights_on_numpy(tmp_path, batch_size):
    """A chunked (zarr) input streams the weights with its blocks: in order, the same steps as
    the in-memory fit; shuffled, the weighted objective and score agree with numpy's."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 3)) + np.repeat(np.eye(3) * 5, [150, 150, 100], axis=0)
    w = rng.choice([0.0, 0.5, 1.0, 3.0], size=400)
    z = zarr.open_array(
        str(tmp_path / "x.zarr"), mode="w", shape=X.shape, chunks=(50, 3), dtype="f8"
    )
    z[:] = X
    kw = dict(
        init=X[[0, 200, 399]] + 0.2,
        scale=None,
        shuffle=False,
        max_iter=2,
        tol=0,
        batch_size=batch_size,
        learning_rate=0.01,
        chunk_size=50,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = StochasticQuantization(3, **kw).fit(X, sample_weight=w)
        chk = StochasticQuantization(3, **kw).fit(z, sample_weight=w)
        shuf = StochasticQuantization(3, random_state=0).fit(z, sample_weight=w)
    np.testing.assert_allclose(chk.cluster_centers_, mem.cluster_centers_, rtol=1e-12)
    assert chk.objective_ == pytest.approx(mem.objective_, rel=1e-12)
    assert shuf.score(z, sample_weight=w) == pytest.approx(
        shuf.score(X, sample_weight=w), rel=1e-12
    )
    assert shuf.objective_ == pytest.approx(-shuf.score(X, sample_weight=w), rel=1e-12)


# ---------------------------------------------------------------- metric="cosine"
def _directional_blobs(n_per=200, d=8, k=4, seed=0):
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(k, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    lab = np.repeat(np.arange(k), n_per)
    U = dirs[lab] + 0.15 * rng.normal(size=(lab.size, d))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    radius = rng.uniform(0.2, 20.0, size=(lab.size, 1))  # lengths must not matter
    return U * radius, U, lab


def _spherical_kmeans(U, centers, n_iter=100):
    for _ in range(n_iter):
        lab = np.argmax(U @ centers.T, axis=1)
        new = np.array([U[lab == k].sum(axis=0) for k in range(len(centers))])
        centers = new / np.linalg.norm(new, axis=1, keepdims=True)
    return centers, np.argmax(U @ centers.T, axis=1)


def test_cosine_centers_on_sphere_and_agree_with_spherical_kmeans():
    X, U, lab = _directional_blobs()
    est = StochasticQuantization(4, metric="cosine", rank=2.0, random_state=0, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    np.testing.assert_allclose(np.linalg.norm(est.cluster_centers_, axis=1), 1.0, rtol=1e-12)
    ref, ref_lab = _spherical_kmeans(U, _sorted(est.cluster_centers_))
    pred = est.predict(X)
    assert adjusted_rand_score(ref_lab, pred) == 1.0
    assert adjusted_rand_score(lab, pred) == 1.0
    cos = np.sum(_sorted(est.cluster_centers_) * ref, axis=1)
    assert cos.min() > 0.999
    # transform is the cosine distance, predict its argmin, lengths of rows irrelevant
    D = est.transform(X)
    np.testing.assert_allclose(D, 1.0 - U @ est.cluster_centers_.T, atol=1e-12)
    np.testing.assert_array_equal(np.argmin(D, axis=1), pred)
    np.testing.assert_array_equal(est.predict(X * 7.5), pred)
    # Euclidean SQ on the raw rows is misled by their lengths
    euclid = StochasticQuantization(4, rank=2.0, random_state=0, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert adjusted_rand_score(lab, euclid.fit(X).predict(X)) < 0.9


def test_cosine_refuses_zero_rows():
    X, _, _ = _directional_blobs(n_per=20)
    X[5] = 0.0
    with pytest.raises(ValueError, match="all-zero row.*first at row 5"):
        StochasticQuantization(4, metric="cosine").fit(X)


# ---------------------------------------------------------------- forgetting
def test_forgetting_floor_matches_hand_computation():
    """rank 2, sgd, one center: with a step far below the floor the center is the
    exponentially weighted mean with factor 0.5 ** (1 / h) per sample: after h samples of a new
    value it has moved exactly half way."""
    h = 25
    a = 1.0 - 0.5 ** (1.0 / h)
    est = StochasticQuantization(
        1,
        init=np.zeros((1, 1)),
        learning_rate=1e-9,
        rank=2.0,
        scale=None,
        projection=None,
        forgetting=h,
    )
    est.partial_fit(np.zeros((10, 1)))
    est.partial_fit(np.ones((h, 1)))
    assert est.cluster_centers_[0, 0] == pytest.approx(0.5, rel=1e-12)
    stream = np.random.default_rng(3).normal(size=(60, 1))
    est.partial_fit(stream)
    y = 0.5
    for x in stream[:, 0]:
        y = (1.0 - a) * y + a * x
    assert est.cluster_centers_[0, 0] == pytest.approx(y, rel=1e-12)
    # without forgetting the same tiny step barely moves the center
    still = StochasticQuantization(
        1, init=np.zeros((1, 1)), learning_rate=1e-9, rank=2.0, scale=None, projection=None
    ).partial_fit(np.ones((h, 1)))
    assert abs(still.cluster_centers_[0, 0]) < 1e-6


def test_forgetting_tracks_a_drifting_stream():
    rng = np.random.default_rng(0)
    kw = dict(n_clusters=1, rank=2.0, random_state=0, scale=None)
    slow = StochasticQuantization(**kw)
    fast = StochasticQuantization(**kw, forgetting=200)
    for day in range(20):
        chunk = rng.normal(loc=day, size=(1000, 2))  # the optimum moves by 1 a day
        slow.partial_fit(chunk)
        fast.partial_fit(chunk)
    # lag of an exponential mean over a drift of 1 per 1000 samples: about h / ln 2 / 1000
    assert abs(fast.cluster_centers_[0, 0] - 19.0) < 0.5
    assert abs(slow.cluster_centers_[0, 0] - 19.0) > 2.0


def test_bad_forgetting_and_metric_are_refused():
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match="forgetting"):
        StochasticQuantization(2, forgetting=0).fit(X)
    with pytest.raises(ValueError, match="metric"):
        StochasticQuantization(2, metric="manhattan").fit(X)


# ---------------------------------------------------------------- n_clusters="auto"
def test_auto_n_clusters_on_blobs():
    rng = np.random.default_rng(0)
    true = rng.uniform(-30, 30, size=(5, 3))
    lab = np.repeat(np.arange(5), 400)
    X = true[lab] + rng.normal(size=(lab.size, 3))
    est = StochasticQuantization("auto", k_range=(2, 9), random_state=0, rank=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    assert est.n_clusters == "auto"  # the parameter is left as given
    assert est.n_clusters_ == 5
    assert est.cluster_centers_.shape == (5, 3)
    assert est.transform(X[:10]).shape == (10, 5)
    sel = est.k_selection_
    assert sel["n_clusters"] == 5 and sel["k_values"] == list(range(2, 10))
    assert int(np.argmax(sel["scores"])) == 3 and len(sel["scores"]) == 8
    assert adjusted_rand_score(lab, est.labels_) > 0.99
    fixed = StochasticQuantization(4, random_state=0).fit(X)
    assert fixed.n_clusters_ == 4 and fixed.k_selection_ is None


def test_auto_n_clusters_partial_fit_chooses_on_first_chunk():
    rng = np.random.default_rng(1)
    true = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    X = true[rng.integers(0, 3, 3000)] + rng.normal(size=(3000, 2))
    est = StochasticQuantization("auto", k_range=(2, 6), random_state=0, rank=2.0)
    est.partial_fit(X[:1500])
    assert est.n_clusters_ == 3
    est.partial_fit(X[1500:])
    assert est.cluster_centers_.shape == (3, 2) and est.k_selection_["n_clusters"] == 3


@pytest.mark.parametrize("bad", [True, 0, "8", 2.0])
def test_bad_n_clusters_is_refused(bad):
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match="n_clusters"):
        StochasticQuantization(bad).fit(X)


def test_auto_with_init_array_or_bad_k_range_is_refused():
    X = np.random.default_rng(0).normal(size=(300, 2))
    with pytest.raises(ValueError, match="init array fixes K"):
        StochasticQuantization("auto", init=np.zeros((3, 2))).fit(X)
    with pytest.raises(ValueError, match="k_range"):
        StochasticQuantization("auto", k_range=(1, 5)).fit(X)


# ---------------------------------------------------------------- settings and the cluster stage
@pytest.mark.parametrize("bad", [True, False, 0, "some", 2.5])
def test_settings_n_clusters_is_strict(bad):
    from pydantic import ValidationError

    from data_contracts.settings import PipelineSettings

    with pytest.raises(ValidationError, match="n_clusters"):
        PipelineSettings(n_clusters=bad)


def test_settings_accept_auto_k_range_and_half_life():
    from pydantic import ValidationError

    from data_contracts.run_record import RunRecord
    from data_contracts.settings import PipelineSettings

    s = PipelineSettings(n_clusters="auto", k_range=(3, 12), forgetting_half_life=5000)
    assert (s.n_clusters, s.k_range, s.forgetting_half_life) == ("auto", (3, 12), 5000)
    assert PipelineSettings(n_clusters="12").n_clusters == 12  # from an environment variable
    with pytest.raises(ValidationError, match="k_range"):
        PipelineSettings(k_range=(5, 3))
    with pytest.raises(ValidationError, match="forgetting_half_life"):
        PipelineSettings(forgetting_half_life=0)
    rec = RunRecord(run_id="r", started_at="2026-01-01T00:00:00+00:00", n_clusters="auto")
    assert rec.n_clusters is None  # known once the cluster stage chose it
    rec.add_stage("cluster", {"n_clusters": 7, "seconds": 1.0})
    assert rec.n_clusters == 7


def _blob_store(lay, run_id, X, labels):
    from sqflow.store.embeddings import create_store, write_embeddings

    store = create_store(
        lay.run_dir(run_id) / "embeddings.zarr",
        n_rows=len(X),
        dim=X.shape[1],
        dataset="blobs",
        encoder_version="v1",
        encoder_hash="h",
        source_manifest_hash="m",
        chunk_rows=500,
    )
    ids = np.array([f"s{i}" for i in range(len(X))])
    write_embeddings(store, lambda a, b: (X[a:b].astype(np.float32), ids[a:b], labels[a:b]))


def test_cluster_stage_records_the_chosen_k_and_warm_starts_with_forgetting(tmp_path):
    from data_contracts.run_record import RunRecord
    from data_contracts.settings import PipelineSettings
    from sqflow.atomic_files import atomic_write_text
    from sqflow.layout import OutputLayout
    from sqflow.pipeline.cluster import cluster_stage

    rng = np.random.default_rng(0)
    true = rng.uniform(-20, 20, size=(4, 3))
    labels = rng.integers(0, 4, 3000)
    X = true[labels] + rng.normal(size=(3000, 3))
    base = dict(output_dir=tmp_path, dask_workers=1, rank=2.0, max_iter=3, store_chunk_rows=500)
    auto = PipelineSettings(n_clusters="auto", k_range=(2, 7), **base)
    lay = OutputLayout.of(auto)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _blob_store(lay, "20260101T000000Z-aaaaaaaa", X, labels)
        first = cluster_stage(auto, "20260101T000000Z-aaaaaaaa")
    assert first["n_clusters"] == 4 and first["k_selection"]["n_clusters"] == 4
    assert first["k_selection"]["k_values"] == list(range(2, 8))
    assert len(first["clusters"]) == 4 and first["warm_start_from"] is None
    rec = RunRecord(
        run_id="20260101T000000Z-aaaaaaaa",
        started_at="2026-01-01T00:00:00+00:00",
        status="completed",
        encoder_version="v1",
        n_clusters=auto.n_clusters,
    )
    rec.add_stage("cluster", first)
    assert rec.n_clusters == 4
    atomic_write_text(lay.run_dir(rec.run_id) / "run.json", rec.to_json())
    # the next night, K fixed at the chosen value: warm start from that run, with forgetting
    fixed = PipelineSettings(n_clusters=4, forgetting_half_life=2000, **base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _blob_store(lay, "20260102T000000Z-bbbbbbbb", X, labels)
        second = cluster_stage(fixed, "20260102T000000Z-bbbbbbbb")
    assert second["warm_start_from"] == "run 20260101T000000Z-aaaaaaaa"
    assert second["forgetting_half_life"] == 2000
    assert second["n_clusters"] == 4 and second["k_selection"] is None


def test_build_report_plots_the_k_selection(tmp_path):
    from sqflow.model_selection import select_n_clusters
    from sqflow.report import RunHealth, build_report

    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    z = np.concatenate([c + rng.normal(size=(200, 2)) for c in centers])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = select_n_clusters(z, (2, 5), sample_size=400, eval_size=200, random_state=0)
    est = StochasticQuantization(sel.n_clusters, random_state=0, rank=2.0).fit(z)
    cid = est.predict(z)
    dist = np.linalg.norm(z - est.cluster_centers_[cid], axis=1)
    common = dict(
        embeddings=z,
        cluster_ids=cid,
        distances=dist,
        centers=est.cluster_centers_,
        sample_ids=[f"s{i}" for i in range(len(z))],
        health=RunHealth(),
    )
    with_k = build_report("auto", tmp_path / "a", k_selection=sel.as_dict(), **common)
    text = with_k.html_path.read_text()
    assert 'data-field="k_selected">3<' in text
    assert 'alt="choice of the number of clusters" src="data:image/png;base64,' in text
    plain = build_report("fixed", tmp_path / "b", **common).html_path.read_text()
    assert "choice of the number of clusters" not in plain


# ---------------------------------------------------------------- against the float64 reference
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nag", "adagrad", "rmsprop", "adam"])
@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("option", ["weights", "cosine", "forgetting"])
def test_options_match_float64_reference(optimizer, batch_size, option):
    """Every rule, Algorithm 1 and mini-batches, with weights (0 included), on the sphere, and
    with a step floor: the kernel equals tests/sq_reference.py step by step."""
    from sqflow.optimizers import DEFAULT_LEARNING_RATES
    from tests.sq_reference import ReferenceSQ

    rng = np.random.default_rng(5)
    X = rng.normal(size=(160, 3)) + np.repeat(np.eye(3) * 4, [60, 50, 50], axis=0)
    init = X[[0, 70, 130]] + 0.3
    lr = DEFAULT_LEARNING_RATES[optimizer] * 10
    w = rng.choice([0.0, 0.5, 1.0, 2.5], size=len(X)) if option == "weights" else None
    h = 40 if option == "forgetting" else None
    cosine = option == "cosine"
    start = init / np.linalg.norm(init, axis=1, keepdims=True) if cosine else init
    rho_min = 0.0 if h is None else (1 - 0.5 ** (1 / h)) / 3.0
    ref = ReferenceSQ(start, optimizer, lr, r=3.0, t0=100.0, rho_min=rho_min, sphere=cosine)
    for a in range(0, len(X), batch_size):
        ww = None if w is None else w[a : a + batch_size]
        if batch_size == 1:
            ref.step(X[a], 1.0 if ww is None else ww[0])
        else:
            ref.batch_step(X[a : a + batch_size], ww)
    est = StochasticQuantization(
        3,
        init=init,
        optimizer=optimizer,
        learning_rate=lr,
        rank=3.0,
        batch_size=batch_size,
        step_offset=100.0,
        max_iter=1,
        tol=0.0,
        shuffle=False,
        scale=None,
        projection=None,
        metric="cosine" if cosine else "euclidean",
        forgetting=h,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, sample_weight=w)
    np.testing.assert_allclose(est.cluster_centers_, ref.centers, rtol=1e-9, atol=1e-11)
    assert not np.allclose(ref.centers, start)  # the comparison is not vacuous
