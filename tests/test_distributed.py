"""Dask-distributed SQ passes on a real LocalCluster, and the assignment pass over a Zarr store."""

from __future__ import annotations

import os
import signal
import threading
import time

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.datasets import make_blobs

from sqflow import StochasticQuantization
from sqflow.assign import assign_store, model_hash
from sqflow.distributed import combine
from sqflow.optimizers import OptimizerState
from sqflow.store import StoreContractError, create_store, open_assignments


@pytest.fixture(scope="module")
def data():
    X, y = make_blobs(60_000, n_features=8, centers=12, random_state=3)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def zarr_store(tmp_path_factory, data):
    X, y = data
    path = tmp_path_factory.mktemp("emb") / "store.zarr"
    store = create_store(
        path,
        n_rows=len(X),
        dim=X.shape[1],
        dataset="blobs",
        encoder_version="test-v1",
        encoder_hash="0" * 64,
        source_manifest_hash="1" * 64,
        chunk_rows=4096,
    )
    for k in range(store.n_chunks):
        a, b = store.chunk_bounds(k)
        store.write_chunk(k, X[a:b], [f"s{i}" for i in range(a, b)], y[a:b])
    return path


def _cluster(n_workers):
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        host="127.0.0.1",
    )


@pytest.fixture(scope="module")
def two_workers():
    with _cluster(2) as cluster, Client(cluster) as client:
        yield client


def test_one_worker_equals_serial_in_memory_fit_exactly(data):
    X, _ = data
    D = da.from_array(X, chunks=(5000, 8))
    kw = dict(
        n_clusters=12, init=X[:12].astype(float), shuffle=False, max_iter=2, tol=0.0, scale=1.0
    )
    serial = StochasticQuantization(**kw).fit(X)
    with _cluster(1) as cluster, Client(cluster):
        dist = StochasticQuantization(**kw).fit(D)
        shuffled_remote = StochasticQuantization(12, random_state=0, max_iter=3).fit(D)
    np.testing.assert_array_equal(dist.cluster_centers_, serial.cluster_centers_)
    assert dist.objective_ == pytest.approx(serial.objective_, rel=1e-12)
    # shuffled passes: the same seeded order on the cluster as when streamed locally
    shuffled_local = StochasticQuantization(12, random_state=0, max_iter=3).fit(D)
    np.testing.assert_array_equal(shuffled_remote.cluster_centers_, shuffled_local.cluster_centers_)


def test_two_workers_objective_within_half_percent_of_serial(data, two_workers):
    X, _ = data
    D = da.from_array(X, chunks=(5000, 8))
    for opt in ("sgd", "adam"):
        serial = StochasticQuantization(12, optimizer=opt, random_state=1).fit(X)
        dist = StochasticQuantization(12, optimizer=opt, random_state=1).fit(D)
        assert dist.objective_ <= 1.005 * serial.objective_, opt
        assert not hasattr(dist, "labels_")


def test_combine_weights_by_update_count_and_copies_single_movers():
    start = OptimizerState.start(np.zeros((3, 2)), "sgd")
    a, b = start.copy(), start.copy()
    a.centers[0], a.count[0] = [1.0, 1.0], 1
    b.centers[0], b.count[0] = [4.0, 4.0], 3
    b.centers[1], b.count[1] = [0.1234567, 7.0], 2
    out = combine(start, [a, b], rows=10)
    np.testing.assert_allclose(out.centers[0], [0.25 * 1 + 0.75 * 4] * 2)
    assert out.centers[1].tolist() == [0.1234567, 7.0]  # bit for bit
    assert out.centers[2].tolist() == [0.0, 0.0]
    assert out.count.tolist() == [4, 2, 0] and out.t == 10


def test_killed_worker_changes_nothing(zarr_store):
    from sqflow.store import open_store

    D = open_store(zarr_store).to_dask()
    kw = dict(n_clusters=12, random_state=5, max_iter=6, tol=0.0, n_parallel=2)
    with _cluster(2) as cluster, Client(cluster) as client:
        reference = StochasticQuantization(**kw).fit(D)
        pids_before = set(client.run(os.getpid).values())
        box = {}

        def fit():
            box["est"] = StochasticQuantization(**kw).fit(D)

        runner = threading.Thread(target=fit)
        runner.start()
        time.sleep(1.0)
        assert runner.is_alive(), "fit finished before the kill: make the test data bigger"
        os.kill(sorted(pids_before)[0], signal.SIGKILL)  # a worker dies mid-pass
        runner.join(timeout=300)
        assert not runner.is_alive()
        client.wait_for_workers(2, timeout=60)
        pids_after = set(client.run(os.getpid).values())
    assert pids_after != pids_before  # the nanny really replaced a dead worker
    np.testing.assert_array_equal(box["est"].cluster_centers_, reference.cluster_centers_)
    assert box["est"].n_steps_ == reference.n_steps_


def test_predict_on_dask_is_lazy_and_matches(data):
    X, _ = data
    est = StochasticQuantization(12, random_state=0).fit(X)
    lazy = est.predict(da.from_array(X, chunks=(7000, 8)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), est.predict(X))


@pytest.mark.parametrize("use_cluster", [False, True])
def test_assign_store_writes_every_row_chunk_by_chunk(zarr_store, data, two_workers, use_cluster):
    X, _ = data
    est = StochasticQuantization(12, random_state=0).fit(X)
    name = f"run-{int(use_cluster)}"
    out = assign_store(est, zarr_store, client=two_workers if use_cluster else None, name=name)
    assert out.rows_committed == len(X)
    back = open_assignments(zarr_store, name=name)
    np.testing.assert_array_equal(back.read_cluster_ids(), est.predict(X))
    dist = np.sqrt(((X - est.cluster_centers_[est.predict(X)]) ** 2).sum(1))
    np.testing.assert_allclose(back.read_distances(), dist, rtol=1e-5, atol=1e-5)
    assert back.metadata.model_hash == model_hash(est)
    # a rerun resumes: nothing pending, nothing rewritten
    again = assign_store(est, zarr_store, name=name)
    assert again.rows_committed == len(X)
    # another model never mixes its rows into this output: refused, or rewritten on request
    other = StochasticQuantization(12, random_state=1).fit(X)
    with pytest.raises(StoreContractError, match="model_hash"):
        assign_store(other, zarr_store, name=name)
    assign_store(other, zarr_store, name=name, if_exists="overwrite")
    back = open_assignments(zarr_store, name=name)
    np.testing.assert_array_equal(back.read_cluster_ids(), other.predict(X))
    assert back.metadata.model_hash == model_hash(other)
