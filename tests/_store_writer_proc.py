"""Writer process for tests/test_store.py: writes a deterministic embedding store so the test
can SIGKILL it at random moments and run it again (resume), or run several at once.

    python tests/_store_writer_proc.py PATH --n-rows N --dim D --chunk-rows C
        [--worker I --n-workers W] [--create] [--pause SECONDS]

Prints "READY" once the store is open, then "WROTE <chunks>" and "PREFECT <bool>" at the end.
``--pause`` sleeps between a chunk's data write and its commit marker, which widens the window
in which a kill leaves written-but-uncommitted data (the case resumption must handle).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqflow.store import create_store, open_store, write_embeddings  # noqa: E402

IDENTITY = {
    "dataset": "kill-test",
    "encoder_version": "enc-v1",
    "encoder_hash": "deadbeef",
    "source_manifest_hash": "manifest-1",
}


def expected_rows(start: int, stop: int, dim: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The rows every writer writes: embedding[i, j] = i + j / 64 (exact in float32 for the
    sizes used), sample_id 'kill-test-%07d', label i % 7 - 1 (so some are -1)."""
    i = np.arange(start, stop)
    emb = (i[:, None] + np.arange(dim)[None, :] / 64.0).astype(np.float32)
    return emb, [f"kill-test-{k:07d}" for k in i], (i % 7 - 1).astype(np.int64)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--n-rows", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--chunk-rows", type=int, required=True)
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--n-workers", type=int, default=1)
    p.add_argument("--create", action="store_true", help="create_store(if_exists='resume')")
    p.add_argument("--pause", type=float, default=0.0)
    a = p.parse_args()

    if a.create:
        store = create_store(
            a.path, n_rows=a.n_rows, dim=a.dim, chunk_rows=a.chunk_rows, **IDENTITY
        )
    else:
        store = open_store(a.path, mode="r+", expected_dim=a.dim)
    if a.pause:
        commit = store._commit_chunk

        def slow_commit(k: int, rows) -> None:
            time.sleep(a.pause)  # data of chunk k is written, its marker not yet
            commit(k, rows)

        store._commit_chunk = slow_commit  # type: ignore[method-assign]
    print("READY", flush=True)
    written = write_embeddings(
        store,
        lambda lo, hi: expected_rows(lo, hi, a.dim),
        worker=a.worker,
        n_workers=a.n_workers,
    )
    print(f"WROTE {written}", flush=True)
    print(f"PREFECT {'prefect' in sys.modules}", flush=True)


if __name__ == "__main__":
    main()
