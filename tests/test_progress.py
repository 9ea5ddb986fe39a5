"""sqflow.progress: a plain callable sees every step of a loop; a failing one never stops it."""

from __future__ import annotations

import numpy as np

from sqflow.progress import progress_bar


def test_callable_progress_sees_each_step_and_a_failing_one_is_dropped(caplog):
    seen: list[tuple[int, int]] = []
    bar = progress_bar(lambda done, total: seen.append((done, total)), 3, "t", "chunk")
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]

    calls = []

    def broken(done: int, total: int) -> None:
        calls.append(done)
        raise RuntimeError("display gone")

    bar = progress_bar(broken, 2, "t", "chunk")
    bar.update(1)
    bar.update(1)
    bar.close()
    assert calls == [0] and "display gone" in caplog.text


def test_write_embeddings_reports_chunks(tmp_path):
    from sqflow.store import create_store, write_embeddings

    store = create_store(
        tmp_path / "s.zarr",
        n_rows=10,
        dim=2,
        dataset="d",
        encoder_version="v",
        encoder_hash="h",
        source_manifest_hash="m",
        chunk_rows=4,
    )
    seen: list[tuple[int, int]] = []

    def produce(lo: int, hi: int):
        return np.zeros((hi - lo, 2), np.float32), [f"s{i}" for i in range(lo, hi)], None

    assert write_embeddings(store, produce, progress=lambda d, t: seen.append((d, t))) == 3
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
