"""sqflow.assign: the assignment pass over an embedding store, run here (no cluster).
(The same pass on a LocalCluster is tested in tests/test_distributed.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from sqflow import StochasticQuantization
from sqflow.assign import assign_block, assign_store, model_hash
from sqflow.store import create_store, open_assignments


@pytest.fixture(scope="module")
def fitted():
    X, y = make_blobs(5000, n_features=4, centers=5, random_state=2)
    X = X.astype(np.float32)
    return X, StochasticQuantization(5, random_state=0, max_iter=3).fit(X)


def _store(path, X):
    store = create_store(
        path,
        n_rows=len(X),
        dim=X.shape[1],
        dataset="blobs",
        encoder_version="test-v1",
        encoder_hash="0" * 64,
        source_manifest_hash="1" * 64,
        chunk_rows=1024,
    )
    for k in range(store.n_chunks):
        a, b = store.chunk_bounds(k)
        store.write_chunk(k, X[a:b], [f"s{i}" for i in range(a, b)])
    return store


def test_assign_block_gives_nearest_center_and_euclidean_distance(fitted):
    X, est = fitted
    lab, dist = assign_block(X[:300], est.cluster_centers_)
    ref = np.sqrt(((X[:300, None, :] - est.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(lab, ref.argmin(1))
    np.testing.assert_allclose(dist, ref.min(1), rtol=1e-6)
    bad = X[:3].copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        assign_block(bad, est.cluster_centers_)


def test_assign_store_writes_every_row_and_names_the_model(tmp_path, fitted):
    X, est = fitted
    store = _store(tmp_path / "e.zarr", X)
    out = assign_store(est, store)
    assert out.rows_committed == len(X)
    back = open_assignments(tmp_path / "e.zarr")
    np.testing.assert_array_equal(back.read_cluster_ids(), est.predict(X))
    np.testing.assert_allclose(back.read_distances(), est.transform(X).min(1), rtol=1e-5)
    assert back.metadata.model_hash == model_hash(est)
    assert len(model_hash(est)) == 16
