"""StochasticQuantization: formulas against a float64 reference, API contracts, bad input."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sqflow import StochasticQuantization
from sqflow.distributed import KernelArgs, run_block
from sqflow.optimizers import DEFAULT_LEARNING_RATES, OptimizerState, step_size
from sqflow.seeding import kmeans_plusplus, random_rows
from tests.sq_reference import ReferenceSQ

OPTIMIZERS = ["sgd", "momentum", "nag", "adagrad", "rmsprop", "adam"]


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(3000, n_features=3, centers=4, cluster_std=0.6, random_state=1)
    return X, y


def exact_sq(X, init, **kw):
    """Estimator set up to run Algorithm 1 in the given order, once, in data units."""
    params = dict(
        n_clusters=len(init),
        init=init,
        max_iter=1,
        tol=0.0,
        shuffle=False,
        scale=None,
        projection=None,
    )
    params.update(kw)
    return StochasticQuantization(**params)


# ---------------------------------------------------------------- optimizer formulas
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("schedule", ["robbins-monro", "constant"])
@pytest.mark.parametrize("rank", [3.0, 1.5])
def test_each_rule_matches_float64_reference_step_by_step(optimizer, schedule, rank, blobs):
    X = blobs[0][:400]
    init = X[:4] + 0.5
    lr = DEFAULT_LEARNING_RATES[optimizer] * 20  # large enough that every rule moves visibly
    ref = ReferenceSQ(init, optimizer, lr, r=rank, schedule=schedule, t0=150.0, power=0.75)
    for n_seen, x in enumerate(X, start=1):
        ref.step(x)
        if n_seen in (4, 5, 6, 50, 400):
            est = exact_sq(
                X[:n_seen],
                init,
                optimizer=optimizer,
                learning_rate=lr,
                rank=rank,
                schedule=schedule,
                step_offset=150.0,
                step_power=0.75,
            ).fit(X[:n_seen])
            np.testing.assert_allclose(est.cluster_centers_, ref.centers, rtol=1e-9, atol=1e-11)
    assert not np.allclose(ref.centers, init)  # the comparison is not vacuous


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_mini_batch_is_mean_generalized_gradient_per_center(optimizer, blobs):
    X = blobs[0][:256]
    init = X[:4] + 0.3
    lr = DEFAULT_LEARNING_RATES[optimizer] * 20
    ref = ReferenceSQ(init, optimizer, lr, r=3.0, t0=100.0, power=1.0)
    for a in range(0, 256, 16):
        ref.batch_step(X[a : a + 16])
    est = exact_sq(
        X,
        init,
        optimizer=optimizer,
        learning_rate=lr,
        batch_size=16,
        step_offset=100.0,
        step_power=1.0,
    ).fit(X)
    np.testing.assert_allclose(est.cluster_centers_, ref.centers, rtol=1e-9, atol=1e-11)
    assert est.n_steps_ == 16


def test_state_is_per_center_not_shared(blobs):
    """A shared Adam state would move a center with another center's moments: the reference
    keeps state per center, so agreement on data that alternates between centers shows it."""
    X = blobs[0]
    order = np.argsort(blobs[1], kind="stable")
    X = np.ascontiguousarray(np.stack([X[order][:200], X[order][-200:]], axis=1).reshape(-1, 3))
    init = np.stack([X[0], X[1]])
    ref = ReferenceSQ(init, "adam", 0.05, r=2.0, schedule="constant")
    for x in X:
        ref.step(x)
    est = exact_sq(
        X, init, optimizer="adam", learning_rate=0.05, rank=2.0, schedule="constant"
    ).fit(X)
    np.testing.assert_allclose(est.cluster_centers_, ref.centers, rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(est._sq_state.count, [200, 200])


def test_robbins_monro_schedule_formula_and_conditions():
    lr, t0, a = 0.01, 500.0, 0.75
    t = np.arange(0, 2_000_000, 1000, dtype=float)
    steps = np.array([step_size(ti, lr, "robbins-monro", t0, a) for ti in t])
    np.testing.assert_allclose(steps, lr / (1 + t / t0) ** a)
    assert np.all(np.diff(steps) < 0)
    assert step_size(10**9, lr, "constant", t0, a) == lr
    with pytest.raises(ValueError, match="step_power"):
        StochasticQuantization(step_power=0.5).fit(np.random.rand(20, 2))  # sum rho^2 diverges
    with pytest.raises(ValueError, match="step_power"):
        StochasticQuantization(step_power=1.5).fit(np.random.rand(20, 2))  # sum rho converges


def test_decaying_steps_beat_constant_noise_floor(blobs):
    X = blobs[0]
    common = dict(
        n_clusters=4,
        optimizer="sgd",
        learning_rate=0.05,
        rank=2.0,
        max_iter=15,
        tol=0.0,
        random_state=0,
    )
    rm = StochasticQuantization(schedule="robbins-monro", step_offset=2000, **common).fit(X)
    const = StochasticQuantization(schedule="constant", **common).fit(X)
    assert rm.objective_ < const.objective_


# ---------------------------------------------------------------- projection and numerics
def test_bbox_projection_keeps_centers_inside_seen_data(blobs):
    X = blobs[0][:500]
    init = X[:4].copy()
    wild = dict(optimizer="momentum", learning_rate=5.0, rank=3.0, schedule="constant")
    free = exact_sq(X, init, **wild).fit(X)
    boxed = exact_sq(X, init, projection="bbox", **wild).fit(X)
    lo, hi = X.min(axis=0), X.max(axis=0)
    assert np.all(boxed.cluster_centers_ >= lo - 1e-12) and np.all(
        boxed.cluster_centers_ <= hi + 1e-12
    )
    # the step safeguard alone keeps this run inside too; the box acts where momentum carries
    # a center past the data: velocity (1, 0) out of a box that is the single point (0, 0)
    assert np.all(np.isfinite(free.cluster_centers_))
    start = OptimizerState.start(np.zeros((1, 2)), "momentum")
    start.m[0] = [1.0, 0.0]
    sample = np.array([[0.0, 1.0]])
    outs = []
    for project in (False, True):
        args = KernelArgs(1, 0.01, 1, 1.0, 1.0, 2.0, 0.9, 0.9, 0.999, 0.9, 1e-8, 1.0, 1, project)
        outs.append(run_block(sample, start, args, 0, None, 0)[0].centers[0])
    assert outs[0][0] == pytest.approx(0.9) and outs[1][0] == 0.0


@pytest.mark.parametrize("rank", [1.0, 1.2, 1.5])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_rank_below_two_is_safe_at_zero_distance(rank, optimizer):
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 50, axis=0)  # samples sit ON the centers
    init = np.array([[0.0, 0.0], [5.0, 5.0]])
    est = exact_sq(X, init, optimizer=optimizer, rank=rank).fit(X)
    assert np.all(np.isfinite(est.cluster_centers_))
    np.testing.assert_array_equal(est.cluster_centers_, init)
    assert est.objective_ == 0.0


@pytest.mark.parametrize("rank", [3.0, 4.0])
def test_rank_above_two_does_not_explode_on_unscaled_data(rank, blobs):
    X = blobs[0]
    small = StochasticQuantization(4, rank=rank, random_state=0).fit(X)
    big = StochasticQuantization(4, rank=rank, random_state=0).fit(X * 1e4)
    assert np.all(np.isfinite(big.cluster_centers_))
    # the run in normalised coordinates is the same: centers scale with the data
    np.testing.assert_allclose(big.cluster_centers_, small.cluster_centers_ * 1e4, rtol=1e-6)
    np.testing.assert_allclose(big.objective_, small.objective_ * 1e4**rank, rtol=1e-6)


# ---------------------------------------------------------------- initialisation
def test_labels_init_maps_center_index_to_class(blobs):
    X, y = blobs
    y_partial = y.copy()
    y_partial[np.random.RandomState(0).rand(len(y)) < 0.9] = -1  # 90 % unlabeled
    est = StochasticQuantization(4, init="labels", random_state=0).fit(X, y_partial)
    assert np.mean(est.labels_ == y) > 0.99


def test_labels_init_missing_class_warns_and_seeds(blobs):
    X, y = blobs
    y_missing = np.where(y == 3, -1, y)
    with pytest.warns(UserWarning, match=r"class\(es\) \[3\]"):
        est = StochasticQuantization(4, init="labels", random_state=0).fit(X, y_missing)
    assert np.mean(est.labels_[y < 3] == y[y < 3]) > 0.99


def test_n_init_keeps_best_objective(blobs):
    X = blobs[0]
    single = [
        StochasticQuantization(4, init="random", random_state=s, max_iter=2).fit(X).objective_
        for s in range(4)
    ]
    multi = StochasticQuantization(4, init="random", n_init=8, random_state=0, max_iter=2).fit(X)
    assert multi.objective_ <= np.median(single) + 1e-12


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_init_candidates_start_from_the_seeding_with_lowest_sample_objective(init, blobs):

    X = blobs[0][:2000]  # <= init_size: the init sample is X itself, no draw
    # replicate the run's generator: one start seed, then the candidate seedings
    run_rng = np.random.RandomState(
        np.random.RandomState(3).randint(np.iinfo(np.int32).max, size=1)[0]
    )
    draw = random_rows if init == "random" else kmeans_plusplus
    cands = [draw(X, 4, run_rng) for _ in range(5)]
    objs = [np.mean(np.min(((X[:, None, :] - c[None]) ** 2).sum(-1), axis=1) ** 1.5) for c in cands]
    assert len(set(np.round(objs, 9))) > 1  # the candidates differ, so the choice matters
    best = cands[int(np.argmin(objs))]
    kw = dict(rank=3.0, shuffle=False, max_iter=2, tol=0.0, random_state=3)
    got = StochasticQuantization(4, init=init, init_candidates=5, **kw).fit(X)
    ref = StochasticQuantization(4, init=best, **kw).fit(X)
    np.testing.assert_array_equal(got.cluster_centers_, ref.cluster_centers_)


def test_init_candidates_escape_a_merged_blob_optimum():
    # 64 blobs in 16-D: one k-means++ seeding often leaves two blobs sharing a center (about
    # 11 % above the optimum); the best of 3 seedings by sample objective avoids it
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(60_000, n_features=16, centers=64, cluster_std=1.0, random_state=0)
    X = X.astype(np.float32)

    def objectives(candidates):
        return np.array(
            [
                StochasticQuantization(64, rank=2.0, init_candidates=candidates, random_state=s)
                .fit(X)
                .objective_
                for s in range(10)
            ]
        )

    one, three = objectives(1), objectives(3)
    opt = min(one.min(), three.min())
    # measured here: 4/10 starts at the optimum with one seeding, 8/10 with three
    assert (three <= 1.005 * opt).sum() >= (one <= 1.005 * opt).sum() + 2
    assert three.mean() < one.mean()


# ---------------------------------------------------------------- partial_fit, determinism
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_partial_fit_in_chunks_equals_one_fit_pass(optimizer, blobs):
    X = blobs[0].astype(np.float32)
    init = X[:4].astype(np.float64) + 0.1
    common = dict(
        n_clusters=4,
        optimizer=optimizer,
        init=init,
        scale=1.0,
        shuffle=False,
        max_iter=1,
        tol=0.0,
        chunk_size=700,
    )
    full = StochasticQuantization(**common).fit(X)
    stream = StochasticQuantization(**common)
    for a, b in [(0, 1000), (1000, 1001), (1001, 2500), (2500, 3000)]:
        stream.partial_fit(X[a:b])
    np.testing.assert_array_equal(stream.cluster_centers_, full.cluster_centers_)
    assert stream.n_steps_ == full.n_steps_ == 3000


def test_partial_fit_batches_equal_fit_when_chunks_are_batch_multiples(blobs):
    X = blobs[0]
    init = X[:4] + 0.1
    common = dict(
        n_clusters=4,
        optimizer="adam",
        init=init,
        scale=1.0,
        shuffle=False,
        max_iter=1,
        tol=0.0,
        batch_size=32,
        chunk_size=640,
    )
    full = StochasticQuantization(**common).fit(X)
    stream = StochasticQuantization(**common)
    for a in range(0, 3000, 320):
        stream.partial_fit(X[a : a + 320])
    np.testing.assert_array_equal(stream.cluster_centers_, full.cluster_centers_)


def test_same_random_state_gives_bit_identical_centers(blobs):
    X = blobs[0]
    for opt in ("sgd", "adam"):
        a = StochasticQuantization(4, optimizer=opt, random_state=7).fit(X).cluster_centers_
        b = StochasticQuantization(4, optimizer=opt, random_state=7).fit(X).cluster_centers_
        np.testing.assert_array_equal(a, b)
    c = StochasticQuantization(4, random_state=8, init="random").fit(X).cluster_centers_
    assert not np.array_equal(
        c, StochasticQuantization(4, random_state=7, init="random").fit(X).cluster_centers_
    )


def test_passed_random_state_is_not_consumed_across_refits(blobs):
    X = blobs[0]
    rs = np.random.RandomState(3)
    est = StochasticQuantization(4, init="random", random_state=rs)
    first = est.fit(X).cluster_centers_.copy()
    second = est.fit(X).cluster_centers_.copy()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(clone(est).fit(X).cluster_centers_, first)


# ---------------------------------------------------------------- fitted attributes
def test_fitted_attributes_and_objective_definition(blobs):
    X = blobs[0]
    est = StochasticQuantization(4, rank=3.0, random_state=0).fit(X)
    d = np.sqrt(((X[:, None, :] - est.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(est.objective_, np.mean(d.min(1) ** 3), rtol=1e-10)
    np.testing.assert_array_equal(est.labels_, d.argmin(1))
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    np.testing.assert_allclose(est.transform(X), d, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(est.score(X), -est.objective_, rtol=1e-12)
    np.testing.assert_array_equal(est.fit_predict(X), est.labels_)
    assert 1 <= est.n_iter_ <= est.max_iter
    assert est.n_steps_ == est.n_iter_ * len(X)
    assert len(est.loss_curve_) >= est.n_iter_ and all(np.isfinite(est.loss_curve_))
    # cheap estimates track the objective: the last pass's mean is close to the exact value
    assert abs(est.loss_curve_[-1] - est.objective_) / est.objective_ < 0.2


def test_reaches_kmeans_quality_on_blobs(blobs):
    from sklearn.cluster import KMeans

    X = blobs[0]
    km = KMeans(4, n_init=3, random_state=0).fit(X)
    for opt in OPTIMIZERS:
        sq = StochasticQuantization(4, optimizer=opt, rank=2.0, random_state=0).fit(X)
        assert sq.objective_ <= 1.01 * km.inertia_ / len(X), opt


# ---------------------------------------------------------------- chunked (zarr-like) input
class TrackingArray:
    """Array-like with storage chunks that records how many rows each read returns."""

    def __init__(self, data, chunk):
        self._data, self.chunks = data, (chunk, data.shape[1])
        self.shape, self.dtype, self.reads = data.shape, data.dtype, []

    def __getitem__(self, key):
        out = self._data[key]
        self.reads.append(out.shape[0])
        return out


def test_chunked_input_streams_one_chunk_at_a_time(blobs):
    X = blobs[0].astype(np.float32)
    arr = TrackingArray(X, chunk=500)
    est = StochasticQuantization(4, chunk_size=500, init_size=300, random_state=0).fit(arr)
    assert max(arr.reads) <= 500
    assert not hasattr(est, "labels_")  # chunked fits do not materialise per-row outputs
    np.testing.assert_array_equal(est.predict(arr), est.predict(X))
    assert max(arr.reads) <= 500


def test_zarr_input_matches_numpy_in_order(blobs):
    zarr = pytest.importorskip("zarr")
    X = blobs[0].astype(np.float32)
    z = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=X.shape, chunks=(256, 3), dtype="float32"
    )
    z[:] = X
    init = X[:4].astype(np.float64)
    kw = dict(n_clusters=4, init=init, scale=1.0, shuffle=False, max_iter=2, tol=0.0)
    a = StochasticQuantization(**kw).fit(z)
    b = StochasticQuantization(**kw).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_allclose(a.objective_, b.objective_, rtol=1e-12)
    shuffled = StochasticQuantization(4, random_state=0).fit(z)
    assert shuffled.objective_ < 1.05 * b.objective_


# ---------------------------------------------------------------- bad input
def _fitted(blobs):
    return StochasticQuantization(4, random_state=0).fit(blobs[0])


def _state(est):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in est.__dict__.items()}


def _assert_same_state(before, after):
    assert before.keys() == after.keys()
    for k in before:
        if isinstance(before[k], np.ndarray):
            np.testing.assert_array_equal(before[k], after[k])
        elif k != "_sq_state":
            assert before[k] == after[k], k


BAD_X = {
    "nan": (lambda X: np.where(np.arange(len(X))[:, None] == 7, np.nan, X), "NaN"),
    "inf": (lambda X: np.where(np.arange(len(X))[:, None] == 7, np.inf, X), "infinity"),
    "1d": (lambda X: X[:, 0], "2D"),
    "empty": (lambda X: X[:0], "0 sample"),
    "too_few": (lambda X: X[:3], "n_samples=3 should be >= n_clusters=4"),
}


@pytest.mark.parametrize("case", sorted(BAD_X))
def test_bad_X_raises_and_mutates_nothing(case, blobs):
    make, message = BAD_X[case]
    est = _fitted(blobs)
    before = _state(est)
    with pytest.raises(ValueError, match=message):
        est.fit(make(blobs[0]))
    _assert_same_state(before, _state(est))


def test_nan_in_chunked_input_names_the_row(blobs):
    X = blobs[0].astype(np.float32).copy()
    X[2345, 1] = np.nan
    with pytest.raises(ValueError, match="row 2345"):
        StochasticQuantization(4, init_size=100, random_state=0).fit(TrackingArray(X, 500))


BAD_PARAMS = {
    "n_clusters": (dict(n_clusters=0), "n_clusters"),
    "rank": (dict(rank=0.5), "rank"),
    "optimizer": (dict(optimizer="lbfgs"), "optimizer.*one of"),
    "init_shape": (dict(init=np.zeros((3, 3))), r"init array has shape \(3, 3\).*\(4, 3\)"),
    "init_name": (dict(init="kmeans"), "init"),
    "batch": (dict(batch_size=0), "batch_size"),
    "lr": (dict(learning_rate=-1.0), "learning_rate"),
    "schedule": (dict(schedule="cosine"), "schedule"),
    "projection": (dict(projection="ball"), "projection"),
    "init_candidates": (dict(init_candidates=0), "init_candidates"),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_parameters_raise_naming_the_parameter(case, blobs):
    extra, message = BAD_PARAMS[case]
    params = dict(n_clusters=4, random_state=0)
    params.update(extra)
    est = _fitted(blobs)
    before = _state(est)
    est.set_params(**params)
    with pytest.raises(ValueError, match=message):
        est.fit(blobs[0])
    after = _state(est)
    for k in params:  # only set_params changed these; fit changed nothing
        before[k] = after[k]
    _assert_same_state(before, after)


@pytest.mark.parametrize(
    "labels, message",
    [
        (lambda y: np.where(y == 3, 4, y), r"outside \[-1, n_clusters\)"),
        (lambda y: np.where(y == 3, -2, y), r"outside \[-1, n_clusters\)"),
        (lambda y: np.full_like(y, -1), "at least one labeled"),
        (lambda y: y[:-1], "entries but X has"),
        (lambda y: None, "y=None"),
    ],
)
def test_bad_labels_raise(labels, message, blobs):
    X, y = blobs
    est = _fitted(blobs)
    before = _state(est)
    est.set_params(init="labels")
    with pytest.raises(ValueError, match=message):
        est.fit(X, labels(y))
    after = _state(est)
    before["init"] = after["init"]
    _assert_same_state(before, after)


def test_partial_fit_feature_mismatch_mutates_nothing(blobs):
    est = StochasticQuantization(4, random_state=0).partial_fit(blobs[0][:500])
    before = _state(est)
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(blobs[0][:500, :2])
    with pytest.raises(ValueError, match="NaN"):
        est.partial_fit(np.full((10, 3), np.nan))
    _assert_same_state(before, _state(est))


# ---------------------------------------------------------------- scikit-learn conventions
def test_check_estimator_passes():
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(
            StochasticQuantization(random_state=0),
            on_fail=None,
            # one weighted fit against one fit on repeated rows, to 1e-7: no order-dependent
            # stochastic method can pass it (scikit-learn expects it to fail for KMeans and
            # MiniBatchKMeans); its statistical form is
            # test_engine_options::test_weights_match_repeated_rows_in_expectation
            expected_failed_checks={
                "check_sample_weight_equivalence_on_dense_data": (
                    "order-dependent SGD: equivalence holds in expectation, tested statistically"
                )
            },
        )
    failed = [(r["check_name"], str(r["exception"])) for r in results if r["status"] == "failed"]
    assert not failed
    names = {r["check_name"]: r["status"] for r in results}
    # the other sample_weight checks run and pass
    for check in (
        "check_sample_weights_list",
        "check_sample_weights_shape",
        "check_sample_weights_not_overwritten",
        "check_all_zero_sample_weights_error",
    ):
        assert names[check] == "passed", check
    assert names["check_sample_weight_equivalence_on_dense_data"] == "xfail"
    assert sum(r["status"] == "passed" for r in results) > 40


def test_clone_pipeline_gridsearch_and_pickle(blobs):
    X = blobs[0]
    est = StochasticQuantization(4, optimizer="adam", random_state=0)
    assert clone(est).get_params() == est.get_params()
    pipe = make_pipeline(StandardScaler(), StochasticQuantization(4, rank=2.0, random_state=0)).fit(
        X
    )
    assert pipe.predict(X).shape == (len(X),)
    grid = GridSearchCV(
        StochasticQuantization(rank=2.0, random_state=0), {"n_clusters": [2, 4]}, cv=2
    ).fit(X)
    assert grid.best_params_["n_clusters"] == 4  # score = -objective favours more centers
    restored = pickle.loads(pickle.dumps(est.fit(X)))
    np.testing.assert_array_equal(restored.predict(X), est.predict(X))
    assert restored.get_feature_names_out().tolist() == [
        f"stochasticquantization{i}" for i in range(4)
    ]


def test_callback_sees_every_pass_for_checkpoints(blobs):
    seen = []
    est = StochasticQuantization(4, max_iter=4, tol=0.0, random_state=0).fit(
        blobs[0], callback=seen.append
    )
    assert [s["pass"] for s in seen] == [1, 2, 3, 4]
    np.testing.assert_array_equal(seen[-1]["centers"], est.cluster_centers_)
    assert seen[0]["objective_estimate"] >= seen[-1]["objective_estimate"]


# ---------------------------------------------------------------- divergence guards
def _fit_recording(est, X):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X)
    return [w for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.fixture(scope="module")
def kmeans_centers(blobs):
    from sklearn.cluster import KMeans

    return KMeans(4, n_init=10, random_state=0).fit(blobs[0]).cluster_centers_


@pytest.mark.parametrize("rank", [8.0, 10.0])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_high_rank_converges_or_warns_and_stays_finite(rank, optimizer, blobs, kmeans_centers):
    X = blobs[0]
    est = StochasticQuantization(4, optimizer=optimizer, rank=rank, random_state=0)
    warned = _fit_recording(est, X)
    assert np.all(np.isfinite(est.cluster_centers_)) and np.isfinite(est.objective_)
    d2 = ((X[:, None, :] - kmeans_centers[None]) ** 2).sum(-1).min(axis=1)
    reference = float(np.mean(d2 ** (rank / 2.0)))
    if est.objective_ > 1.02 * reference:
        assert warned, f"objective {est.objective_ / reference:.3f}x KMeans' with no warning"
        assert "learning_rate" in str(warned[0].message) or "max_iter" in str(warned[0].message)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("projection", ["bbox", None])
def test_huge_learning_rate_warns_naming_the_cure_and_stays_finite(optimizer, projection, blobs):
    X = blobs[0]
    est = StochasticQuantization(
        4, optimizer=optimizer, rank=10.0, learning_rate=1e6, projection=projection, random_state=0
    )
    warned = _fit_recording(est, X)
    assert np.all(np.isfinite(est.cluster_centers_)) and np.isfinite(est.objective_)
    assert warned and "lower learning_rate" in str(warned[0].message)
    # distances are real numbers, so predict assigns by them (NaN centers sent all to 0)
    assert np.all(np.isfinite(est.transform(X)))


def test_safeguard_leaves_stable_steps_untouched(blobs):
    """Default learning rates at r = 3 never trigger the safeguard: Algorithm 1 is exact."""
    X = blobs[0]
    est = StochasticQuantization(4, rank=3.0, random_state=0)
    assert not _fit_recording(est, X)
    # and a reference run that only ever takes stable steps matches step by step
    init = X[:4] + 0.5
    ref = ReferenceSQ(init, "sgd", 0.01, r=3.0, t0=150.0)
    for x in X[:300]:
        ref.step(x)
    assert ref.clipped == 0
