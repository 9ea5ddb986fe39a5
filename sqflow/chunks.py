"""Reading data chunk by chunk: in-memory arrays and larger-than-memory array-likes alike.

A *chunked* input is anything with ``shape``, ``dtype``, ``chunks`` and row slicing (a zarr
array, a dask array, an h5py dataset): it is read one block of rows at a time, so memory holds
one chunk plus a bounded initialisation sample, never the whole array.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def is_chunked(X: object) -> bool:
    """True for larger-than-memory array-likes that must be streamed (zarr, dask, h5py)."""
    if isinstance(X, (np.ndarray, list, tuple)):
        return False
    if hasattr(X, "tocsr") or hasattr(X, "iloc"):  # scipy.sparse / pandas: in-memory paths
        return False
    return all(hasattr(X, a) for a in ("shape", "dtype", "chunks", "__getitem__"))


def as_float_rows(block) -> np.ndarray:
    """``block`` as a float array: float32/float64 kept as they are, other dtypes -> float64."""
    block = np.asarray(block)
    return block if block.dtype in (np.float32, np.float64) else block.astype(np.float64)


def row_block(X, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a chunked array as a float array (see :func:`as_float_rows`)."""
    return as_float_rows(X[start:stop])


def check_block_finite(
    block: np.ndarray, start: int, name: str = "X", rows: np.ndarray | None = None
) -> None:
    """Raise ValueError naming how many values are bad and the first bad row and column when a
    block holds NaN or infinity.

    Row i of ``block`` is row ``start + i`` of ``name``, or ``rows[i]`` when given (a gathered
    sample)."""
    finite = np.isfinite(block)
    if not finite.all():
        i, c = (int(v) for v in np.argwhere(~finite)[0])
        bad = int(rows[i]) if rows is not None else i + start
        raise ValueError(
            f"{name} holds {int(finite.size - finite.sum())} NaN/inf value(s) (first at row "
            f"{bad}, column {c}); values must be finite: drop, impute or re-embed those rows"
        )


def block_rows(X, chunk_size: int) -> int:
    """Rows per block for a chunked input: whole storage chunks, about ``chunk_size`` rows."""
    chunks = getattr(X, "chunks", None)
    storage = None
    if isinstance(chunks, tuple) and chunks:
        first = chunks[0]
        if isinstance(first, (int, np.integer)):
            storage = int(first)
        elif isinstance(first, tuple) and first:  # dask: ((c0, c1, ...), (d,))
            storage = int(max(first))
    if not storage:
        return chunk_size
    return storage * max(1, chunk_size // storage)


def block_bounds(n_rows: int, rows_per_block: int) -> list[tuple[int, int]]:
    return [(a, min(a + rows_per_block, n_rows)) for a in range(0, n_rows, rows_per_block)]


def iter_blocks(
    X, bounds: list[tuple[int, int]], order: np.ndarray | None = None, name: str = "X"
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, block)`` for each bound (in ``order`` if given), checked finite."""
    seq = range(len(bounds)) if order is None else order
    for b in seq:
        start, stop = bounds[b]
        block = row_block(X, start, stop)
        check_block_finite(block, start, name)
        yield start, stop, block


def sample_picks(n: int, size: int, rng: np.random.RandomState) -> np.ndarray:
    """Sorted indices of a uniform sample of ``size`` distinct rows out of ``n``."""
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def uniform_sample(
    X,
    size: int,
    rng: np.random.RandomState,
    bounds: list[tuple[int, int]],
    picks: np.ndarray | None = None,
) -> np.ndarray:
    """A uniform sample of ``size`` distinct rows of a chunked array, read block by block.

    Only the blocks that hold sampled rows are read, and only the sampled rows are kept.
    ``picks`` (sorted row indices) reads those rows instead of drawing a sample.
    """
    if picks is None:
        picks = sample_picks(X.shape[0], size, rng)
    out = []
    for start, stop in bounds:
        lo, hi = np.searchsorted(picks, [start, stop])
        if hi > lo:
            block = row_block(X, start, stop)
            check_block_finite(block, start)
            out.append(block[picks[lo:hi] - start])
    return np.concatenate(out, axis=0)
