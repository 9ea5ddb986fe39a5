"""sqflow.chunks: block geometry, streaming, sampling and the finiteness check."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from sqflow.chunks import (
    as_float_rows,
    block_bounds,
    block_rows,
    check_block_finite,
    is_chunked,
    iter_blocks,
    uniform_sample,
)


@pytest.fixture()
def zarr_array(tmp_path):
    X = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    z = zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(128, 3), dtype="float32")
    z[:] = X
    return X, z


def test_is_chunked_tells_streamed_inputs_from_in_memory_ones(zarr_array):
    X, z = zarr_array
    assert is_chunked(z) and is_chunked(da.from_array(X, chunks=(100, 3)))
    assert not is_chunked(X) and not is_chunked([[1.0]])


def test_block_rows_are_whole_storage_chunks(zarr_array):
    X, z = zarr_array
    assert block_rows(z, 1000) == 896  # 7 chunks of 128
    assert block_rows(z, 50) == 128  # never less than one chunk
    assert block_rows(da.from_array(X, chunks=(300, 3)), 1000) == 900
    assert block_rows(X, 777) == 777  # no storage chunks: the requested size
    assert block_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert block_bounds(0, 4) == []


def test_iter_blocks_covers_every_row_once_in_the_given_order(zarr_array):
    X, z = zarr_array
    bounds = block_bounds(1000, block_rows(z, 256))
    seen = np.concatenate([b for _, _, b in iter_blocks(z, bounds)])
    np.testing.assert_array_equal(seen, X)
    order = np.arange(len(bounds))[::-1]
    starts = [s for s, _, _ in iter_blocks(z, bounds, order)]
    assert starts == sorted(starts, reverse=True)


def test_as_float_rows_keeps_float32_and_widens_the_rest():
    assert as_float_rows(np.zeros(2, np.float32)).dtype == np.float32
    assert as_float_rows(np.zeros(2, np.int16)).dtype == np.float64


def test_nan_is_reported_with_count_row_and_column(zarr_array):
    X, z = zarr_array
    z[300, 2] = np.nan
    z[301, 0] = np.inf
    with pytest.raises(
        ValueError, match=r"emb holds 2 NaN/inf value\(s\) \(first at row 300, column 2\)"
    ):
        list(iter_blocks(z, block_bounds(1000, 128), name="emb"))
    block = np.array([[0.0, np.nan]])
    with pytest.raises(ValueError, match="first at row 42, column 1"):
        check_block_finite(block, 0, rows=np.array([42]))


def test_uniform_sample_reads_distinct_rows_of_the_input(zarr_array):
    X, z = zarr_array
    s = uniform_sample(z, 100, np.random.RandomState(0), block_bounds(1000, 128))
    assert s.shape == (100, 3)
    rows = (s[:, 0] / 3).astype(int)
    assert len(set(rows.tolist())) == 100
    np.testing.assert_array_equal(s, X[rows])
    everything = uniform_sample(z, 5000, np.random.RandomState(0), block_bounds(1000, 128))
    np.testing.assert_array_equal(everything, X)
