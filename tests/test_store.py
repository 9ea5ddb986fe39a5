"""Tests of sqflow.store: contract checks, round trip, chunk iteration, resumption after a real
SIGKILL, concurrent writers, fsspec URLs, compression, assignments."""

from __future__ import annotations

import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr.codecs

import data_contracts.store as contract
from sqflow.store import (
    StoreContractError,
    StoreIntegrityError,
    StoreNotFoundError,
    create_store,
    default_chunk_rows,
    open_assignment_writer,
    open_assignments,
    open_store,
    read_labels,
    read_sample_ids,
    verify_store,
    write_assignments,
    write_embeddings,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _store_writer_proc import IDENTITY, expected_rows  # noqa: E402

WRITER = Path(__file__).resolve().parent / "_store_writer_proc.py"
ROOT = Path(__file__).resolve().parents[1]


def make(path, n_rows=1000, dim=8, chunk_rows=128, **kw):
    return create_store(path, n_rows=n_rows, dim=dim, chunk_rows=chunk_rows, **{**IDENTITY, **kw})


def produce(dim):
    return lambda lo, hi: expected_rows(lo, hi, dim)


def assert_rows_match(store, start, stop):
    emb, ids, lab = expected_rows(start, stop, store.dim)
    np.testing.assert_array_equal(store.embedding[start:stop], emb)
    assert list(store._arrays["sample_id"][start:stop]) == ids
    np.testing.assert_array_equal(store._arrays["label"][start:stop], lab)


def assert_complete_and_exact(path, n_rows, dim):
    store = open_store(path, expected_dim=dim, known_encoders=["enc-v1"])
    assert store.rows_committed == n_rows and store.is_complete
    assert store.metadata.rows_committed == n_rows and store.metadata.complete
    emb, ids, lab = expected_rows(0, n_rows, dim)
    np.testing.assert_array_equal(store.read_embeddings(), emb)
    got_ids = store.read_sample_ids()
    assert len(set(got_ids.tolist())) == n_rows  # no duplicate
    assert got_ids.tolist() == ids  # no missing row, right order
    np.testing.assert_array_equal(store.read_labels(), lab)


def edit_attrs(path: Path, change) -> None:
    meta_file = path / "zarr.json"
    doc = json.loads(meta_file.read_text())
    change(doc["attributes"])
    meta_file.write_text(json.dumps(doc))


# --------------------------------------------------------------------------- round trip
def test_round_trip_gap_and_chunk_iteration(tmp_path):
    path = tmp_path / "emb.zarr"
    store = make(path, n_rows=1000, dim=8, chunk_rows=128)
    assert store.n_chunks == 8 and store.rows_committed == 0
    for k in (0, 1, 3):  # chunk 2 missing: only the prefix 0..1 is visible
        lo, hi = store.chunk_bounds(k)
        store.write_chunk(k, *expected_rows(lo, hi, 8))
    reader = open_store(path, expected_dim=8, expected_encoder="enc-v1")
    assert reader.rows_committed == 256
    assert reader.metadata.rows_committed == 256  # attribute written at commit
    assert reader.committed_chunks().tolist() == [True, True, False, True] + [False] * 4
    assert reader.pending_chunks() == [2, 4, 5, 6, 7]
    assert reader.pending_chunks(worker=1, n_workers=2) == [5, 7]
    chunks = list(reader.iter_chunks())
    assert [(c.index, c.start, c.stop) for c in chunks] == [(0, 0, 128), (1, 128, 256)]
    assert chunks[0].embedding.shape == (128, 8) and chunks[0].embedding.dtype == np.float32
    # iteration never reads more than one chunk at a time
    reads = []

    class Spy:
        def __init__(self, arr):
            self.arr = arr

        def __getitem__(self, key):
            reads.append(key.stop - key.start)
            return self.arr[key]

        def __getattr__(self, name):  # dtype, metadata, ...: the real array's
            return getattr(self.arr, name)

    reader._arrays = {name: Spy(arr) for name, arr in reader._arrays.items()}
    assert sum(len(c) for c in reader.iter_chunks()) == 256
    assert reads and max(reads) <= 128
    reader = open_store(path)
    only_labels = list(reader.iter_chunks(columns=["label"]))
    assert only_labels[0].embedding is None and only_labels[0].label.dtype == np.int64
    assert reader.to_dask().shape == (256, 8)
    assert reader.to_dask().chunks[0] == (128, 128)
    with pytest.raises(ValueError, match="rows_committed=256"):
        reader.read_embeddings(0, 300)
    with pytest.raises(ValueError, match="unknown"):
        list(reader.iter_chunks(columns=["embeddings"]))

    written = write_embeddings(store, produce(8))
    assert written == 5
    assert write_embeddings(store, produce(8)) == 0  # nothing left: producer not called
    assert_complete_and_exact(path, 1000, 8)
    full = open_store(path)
    assert full.to_dask().sum().compute() == pytest.approx(float(full.read_embeddings().sum()))
    assert read_labels(path).shape == (1000,)
    assert read_sample_ids(full)[-1] == "kill-test-0000999"
    meta = full.metadata
    assert meta.contract_version == "1" and meta.producer_version
    assert meta.created_at <= meta.updated_at and meta.encoder_hash == "deadbeef"


def test_unlabeled_default_and_write_validation(tmp_path):
    store = make(tmp_path / "e.zarr", n_rows=300, dim=4, chunk_rows=100)
    emb, ids, _ = expected_rows(0, 100, 4)
    store.write_chunk(0, emb.astype(np.float64), ids)  # float64 is cast, label None -> -1
    assert store.read_labels().tolist() == [-1] * 100
    assert store.read_embeddings().dtype == np.float32
    with pytest.raises(ValueError, match=r"expected \(100, 4\)"):
        store.write_chunk(1, emb[:, :3], ids)
    bad = emb.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.write_chunk(1, bad, ids)
    with pytest.raises(ValueError, match="< -1"):
        store.write_chunk(1, emb, ids, np.full(100, -2))
    with pytest.raises(ValueError, match="empty"):
        store.write_chunk(1, emb, [""] * 100)
    with pytest.raises(IndexError, match="valid: 0..2"):
        store.write_chunk(3, emb, ids)
    with pytest.raises(PermissionError, match="read-only"):
        open_store(tmp_path / "e.zarr").write_chunk(1, emb, ids)
    assert store.rows_committed == 100  # failed writes committed nothing


def test_default_chunk_rows():
    assert default_chunk_rows(16) == 65536  # 4 MiB of float32
    assert default_chunk_rows(100_000) == 1024
    assert default_chunk_rows(1) == 2**20


# --------------------------------------------------------------------------- contract
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a.pop("dim"), r"attribute 'dim' is missing"),
        (lambda a: a.pop("encoder_hash"), r"attribute 'encoder_hash' is missing"),
        (lambda a: a.update(contract_version="2"), r"contract_version='2' is not supported"),
        (lambda a: a.update(dtype="float64"), r"attribute 'dtype'='float64'"),
        (lambda a: a.update(colour="red"), r"'colour' is not part of the contract"),
        (lambda a: a.update(rows_committed=10**6), r"exceeds n_rows"),
        (lambda a: a.update(kind="something"), r"attribute 'kind'"),
    ],
)
def test_open_rejects_broken_metadata(tmp_path, change, match):
    path = tmp_path / "e.zarr"
    make(path)
    edit_attrs(path, change)
    with pytest.raises(StoreContractError, match=match) as info:
        open_store(path)
    assert str(path) in str(info.value)


def test_open_checks_expectations(tmp_path):
    path = tmp_path / "e.zarr"
    make(path, dim=8)
    with pytest.raises(StoreContractError, match=r"dim=8, but expected_dim=16"):
        open_store(path, expected_dim=16)
    with pytest.raises(StoreContractError, match=r"not a known encoder; valid .*\['a', 'b'\]"):
        open_store(path, known_encoders=["b", "a"])
    with pytest.raises(StoreContractError, match=r"expected_encoder='enc-v2'"):
        open_store(path, expected_encoder="enc-v2")
    with pytest.raises(StoreContractError, match=r"source_manifest_hash='manifest-1'"):
        open_store(path, expected_manifest_hash="other")
    with pytest.raises(StoreContractError, match=r"encoder_hash='deadbeef'"):
        open_store(path, expected_encoder_hash="cafe")
    with pytest.raises(StoreNotFoundError, match="no embedding store"):
        open_store(tmp_path / "nothing.zarr")
    with pytest.raises(ValueError, match="mode="):
        open_store(path, mode="w")


def test_create_store_resume_and_parameter_errors(tmp_path):
    path = tmp_path / "e.zarr"
    store = make(path)
    store.write_chunk(0, *expected_rows(0, 128, 8))
    again = make(path)  # if_exists="resume" (default) keeps committed chunks
    assert again.rows_committed == 128
    assert again.metadata.created_at == store.metadata.created_at
    with pytest.raises(StoreContractError, match=r"encoder_hash='deadbeef' but create_store got"):
        make(path, encoder_hash="0000")
    with pytest.raises(StoreContractError, match=r"chunk_rows=128 but create_store got"):
        make(path, chunk_rows=64)
    with pytest.raises(FileExistsError, match="if_exists='resume'"):
        make(path, if_exists="error")
    assert make(path, if_exists="overwrite").rows_committed == 0
    with pytest.raises(ValueError, match=r"compression='lz4'.*valid"):
        make(tmp_path / "x.zarr", compression="lz4")
    with pytest.raises(ValueError, match=r"compression_level=99"):
        make(tmp_path / "x.zarr", compression="gzip", compression_level=99)
    with pytest.raises(ValueError, match=r"dim=0"):
        make(tmp_path / "x.zarr", dim=0)
    with pytest.raises(ValueError, match=r"if_exists='append'"):
        make(tmp_path / "x.zarr", if_exists="append")
    with pytest.raises(ValueError, match="storage_options"):
        make(tmp_path / "x.zarr", storage_options={"anon": True})


def test_interrupted_creation_is_finished_on_resume(tmp_path):
    path = tmp_path / "e.zarr"
    make(path)
    shutil.rmtree(path / "_committed")  # as if killed before the last array was created
    with pytest.raises(StoreContractError, match="'_committed' is missing"):
        open_store(path)
    store = make(path)
    assert store.pending_chunks() == list(range(8))
    write_embeddings(store, produce(8))
    assert_complete_and_exact(path, 1000, 8)


# --------------------------------------------------------------------------- compression, URLs
@pytest.mark.parametrize(
    ("compression", "codec"),
    [
        (None, zarr.codecs.ZstdCodec),
        ("gzip", zarr.codecs.GzipCodec),
        ("blosc", zarr.codecs.BloscCodec),
        ("none", None),
    ],
)
def test_compression_option(tmp_path, compression, codec):
    kw = {} if compression is None else {"compression": compression}
    path = tmp_path / "e.zarr"
    store = make(path, n_rows=4096, dim=16, chunk_rows=1024, **kw)
    write_embeddings(store, produce(16))
    reader = open_store(path)
    assert reader.metadata.compression == (compression or "zstd")
    comps = reader.embedding.compressors
    # every codec list ends with the CRC32C checksum; zstd checks its own frames too
    assert isinstance(comps[-1], zarr.codecs.Crc32cCodec)
    if codec is None:
        assert len(comps) == 1
    else:
        assert isinstance(comps[0], codec)
        if codec is zarr.codecs.ZstdCodec:
            assert comps[0].checksum
    assert_complete_and_exact(path, 4096, 16)
    size = sum(f.stat().st_size for f in (path / "embedding").rglob("*") if f.is_file())
    raw = 4096 * 16 * 4
    assert (size < raw * 0.8) if codec else (size >= raw)


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_urls(tmp_path, scheme):
    url = (
        f"memory://sqflow-test-{os.getpid()}/{tmp_path.name}/e.zarr"
        if scheme == "memory"
        else (tmp_path / "e.zarr").as_uri()
    )
    store = make(url, n_rows=700, dim=8, chunk_rows=100)
    store.write_chunk(0, *expected_rows(0, 100, 8))
    # a second writer object (as after a restart) resumes from the URL
    resumed = make(url, n_rows=700, dim=8, chunk_rows=100)
    assert resumed.pending_chunks() == list(range(1, 7))
    write_embeddings(resumed, produce(8))
    assert_complete_and_exact(url, 700, 8)
    if scheme == "file":
        assert (tmp_path / "e.zarr" / "zarr.json").exists()
    write_assignments(url, np.arange(700) % 3, np.linspace(0, 1, 700), n_clusters=3)
    got = open_assignments(url)
    assert got.is_complete and got.read_cluster_ids().tolist() == (np.arange(700) % 3).tolist()
    with pytest.raises(StoreNotFoundError):
        open_store(url.replace("e.zarr", "missing.zarr"))


# --------------------------------------------------------------------------- assignments
def test_assignment_writer_resumes_and_validates(tmp_path):
    path = tmp_path / "e.zarr"
    store = make(path, n_rows=1000, dim=8, chunk_rows=128)
    write_embeddings(store, produce(8))
    ids = np.arange(1000) % 5
    dist = np.linspace(0.0, 2.0, 1000)

    w = open_assignment_writer(path, n_clusters=5, model_hash="m1")
    assert w.n_rows == 1000 and w.chunk_rows == 128 and w.pending_chunks() == list(range(8))
    assert w.write(0, ids[:256], dist[:256]) == 2  # two whole chunks in one call
    with pytest.raises(ValueError, match="start_row=100 is not chunk-aligned"):
        w.write(100, ids[100:228], dist[100:228])
    with pytest.raises(ValueError, match="end inside a chunk"):
        w.write(256, ids[256:300], dist[256:300])
    with pytest.raises(ValueError, match=r"valid: 0..4"):
        w.write(256, ids[256:384] + 5, dist[256:384])
    with pytest.raises(ValueError, match="finite"):
        w.write(256, ids[256:384], -dist[256:384] - 1)
    with pytest.raises(ValueError, match="same length"):
        w.write(256, ids[256:384], dist[256:380])
    # "killed" here: a new writer continues after the committed chunks
    w2 = open_assignment_writer(store, n_clusters=5, model_hash="m1")
    assert w2.pending_chunks() == [2, 3, 4, 5, 6, 7]
    with pytest.raises(StoreContractError, match=r"model_hash='m1' but this writer has"):
        open_assignment_writer(path, n_clusters=5, model_hash="m2")
    with pytest.raises(ValueError, match="n_rows=2000"):
        open_assignment_writer(path, name="other", n_rows=2000)
    with pytest.raises(ValueError, match="name="):
        open_assignment_writer(path, name="../x")
    with w2:
        for k in w2.pending_chunks():
            lo, hi = w2.chunk_bounds(k)
            w2.write(lo, ids[lo:hi], dist[lo:hi])
    out = open_assignments(path)
    assert out.is_complete and out.metadata.complete and out.metadata.rows_committed == 1000
    np.testing.assert_array_equal(out.read_cluster_ids(), ids.astype(np.int32))
    np.testing.assert_allclose(out.read_distances(), dist.astype(np.float32))
    assert [(a, b) for a, b, *_ in out.iter_chunks()][-1] == (896, 1000)
    assert out.metadata.embedding_store == str(path.resolve())
    with pytest.raises(PermissionError):
        out.write(0, ids[:128], dist[:128])
    # the embedding store itself is untouched and still valid
    assert_complete_and_exact(path, 1000, 8)


def test_write_assignments_from_dask_to_separate_target(tmp_path):
    import dask.array as da

    path = tmp_path / "e.zarr"
    write_embeddings(make(path, n_rows=500, dim=8, chunk_rows=100), produce(8))
    emb = open_store(path).to_dask()
    cid = da.argmax(emb, axis=1)  # lazy, computed one chunk at a time
    dist = da.linalg.norm(emb, axis=1)
    target = tmp_path / "assign.zarr"
    w = write_assignments(path, cid, dist, target=target, name="run1")
    assert w.is_complete and (target / "zarr.json").exists()
    assert not (path / "assignments").exists()
    got = open_assignments(path, target=target)
    assert got.read_cluster_ids().tolist() == [7] * 500
    with pytest.raises(StoreNotFoundError, match="no assignments"):
        open_assignments(path, name="nope")


# --------------------------------------------------------------------------- contract files
def test_json_schema_is_current():
    stale = contract.export_schemas(check=True)
    assert stale == [], "run `python -m data_contracts.store` and commit the schemas"
    schema = json.loads(contract.EMBEDDING_STORE_SCHEMA_PATH.read_text())
    assert {"dim", "encoder_hash", "rows_committed", "contract_version"} <= set(schema["required"])


def test_data_contracts_import_nothing_of_ours():
    tree = ast.parse((ROOT / "data_contracts" / "store.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m.split(".")[0] for m in mods if m} & {"sqflow", "flows", "tasks"}


# --------------------------------------------------------------------------- real processes
def spawn(path, *, n_rows, dim, chunk_rows, create=False, worker=0, n_workers=1, pause=0.0):
    cmd = [
        sys.executable,
        str(WRITER),
        str(path),
        "--n-rows",
        str(n_rows),
        "--dim",
        str(dim),
        "--chunk-rows",
        str(chunk_rows),
        "--worker",
        str(worker),
        "--n-workers",
        str(n_workers),
        "--pause",
        str(pause),
    ]
    if create:
        cmd.append("--create")
    # stderr merged into stdout: one pipe read through one buffer, so nothing is lost between
    # readline() and the final read, and a chatty stderr cannot fill its pipe and block the writer
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )


def wait_ready(proc):
    seen = []
    for line in proc.stdout:
        if line.strip() == "READY":
            return
        seen.append(line)
    raise AssertionError(f"writer exited with {proc.wait()} before READY:\n{''.join(seen)}")


def finish(proc) -> int:
    out = proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 0, out
    lines = dict(
        line.split(" ", 1) for line in out.splitlines() if line.startswith(("WROTE ", "PREFECT "))
    )
    assert lines["PREFECT"] == "False", out  # the engine must not import prefect
    return int(lines["WROTE"])


def check_committed_rows_are_complete(path, dim) -> np.ndarray:
    """After a kill: the store opens (metadata intact), every committed chunk holds exactly the
    expected rows, and the rows_committed attribute never claims more than the markers."""
    store = open_store(path, expected_dim=dim)
    done = store.committed_chunks()
    for k in np.flatnonzero(done):
        assert_rows_match(store, *store.chunk_bounds(int(k)))
    assert store.metadata.rows_committed <= store.rows_committed
    return done


N_ROWS, DIM, CHUNK = 24_000, 16, 500  # 48 chunks


@pytest.mark.parametrize("rep", range(4))
def test_sigkill_mid_write_then_resume(tmp_path, rep):
    rng = random.Random(1234 + rep)
    path = tmp_path / "kill.zarr"
    pause = [0.01, 0.0, 0.005, 0.0][rep]  # with a pause most kills land between data and marker
    proc = spawn(path, n_rows=N_ROWS, dim=DIM, chunk_rows=CHUNK, create=True, pause=pause)
    wait_ready(proc)
    # the whole write takes >= 0.25 s idle (48 chunks of ~5 ms, plus the pauses): kill before
    time.sleep(rng.uniform(0.01, 0.1) if pause == 0 else rng.uniform(0.02, 0.3))
    assert proc.poll() is None, "writer finished before the kill; make the store bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    done = check_committed_rows_are_complete(path, DIM)
    n_chunks = N_ROWS // CHUNK
    assert done.sum() < n_chunks  # killed mid-write, not after

    # The next run resumes: it writes exactly the chunks that were not committed (none twice,
    # none skipped). Once as a new process, otherwise in-process (saves a 1-2 s start).
    if rep == 0:
        again = spawn(path, n_rows=N_ROWS, dim=DIM, chunk_rows=CHUNK, create=True)
        wait_ready(again)
        written = finish(again)
    else:
        store = create_store(path, n_rows=N_ROWS, dim=DIM, chunk_rows=CHUNK, **IDENTITY)
        written = write_embeddings(store, produce(DIM))
    assert written == n_chunks - int(done.sum())
    assert_complete_and_exact(path, N_ROWS, DIM)


def test_concurrent_writers_with_one_killed_lose_no_rows(tmp_path):
    path = tmp_path / "multi.zarr"
    n_rows = 30_000  # 60 chunks, 20 per writer
    make(path, n_rows=n_rows, dim=DIM, chunk_rows=CHUNK)
    procs = [
        spawn(path, n_rows=n_rows, dim=DIM, chunk_rows=CHUNK, worker=i, n_workers=3, pause=0.005)
        for i in range(3)
    ]
    wait_ready(procs[1])
    time.sleep(0.05)  # worker 1 needs >= 20 x 5 ms: still writing
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait(timeout=30)
    assert procs[1].returncode == -signal.SIGKILL
    assert finish(procs[0]) == 20 and finish(procs[2]) == 20
    done = check_committed_rows_are_complete(path, DIM)
    assert done[0::3].all() and done[2::3].all() and not done[1::3].all()
    # a single writer (here in-process) picks up exactly what the killed one left
    rest = open_store(path, mode="r+")
    assert write_embeddings(rest, produce(DIM)) == int((~done).sum())
    assert_complete_and_exact(path, n_rows, DIM)


def test_overlapping_concurrent_writers_lose_no_rows(tmp_path):
    # Two writers that were (wrongly) both given every chunk: they write identical bytes to the
    # same keys, so nothing is lost or duplicated (unlike concurrent Zarr append()).
    path = tmp_path / "overlap.zarr"
    make(path, n_rows=10_000, dim=DIM, chunk_rows=CHUNK)
    procs = [spawn(path, n_rows=10_000, dim=DIM, chunk_rows=CHUNK) for _ in range(2)]
    written = [finish(p) for p in procs]
    assert sum(written) >= 20
    store = open_store(path, mode="r+")
    assert store.is_complete  # the markers: exact
    # the attribute is a lower bound while writers race on zarr.json; one refresh makes it exact
    assert store.metadata.rows_committed <= 10_000
    assert store.refresh_summary() == 10_000
    assert_complete_and_exact(path, 10_000, DIM)


# --------------------------------------------------------------------------- verified stores
def _written(path, n_rows=1000, with_assignments=False):
    store = make(path, n_rows=n_rows, dim=8, chunk_rows=128)
    write_embeddings(store, produce(8))
    if with_assignments:
        ids = np.arange(n_rows) % 3
        write_assignments(store, ids, ids.astype(np.float64) / 2, n_clusters=3, model_hash="m")
    return store


def _chunk(path, array, k):
    """File of row chunk k of an array (the 2-D embedding has one column chunk, "0")."""
    return (
        path / array / "c" / str(k) / "0" if array == "embedding" else path / array / "c" / str(k)
    )


def _readers(store):
    return {
        "embedding": store.read_embeddings,
        "sample_id": store.read_sample_ids,
        "label": store.read_labels,
    }


def _damage(how, file, other=None):
    if how == "delete":
        file.unlink()
    elif how == "truncate":
        data = file.read_bytes()
        file.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0x40
        file.write_bytes(bytes(data))
    elif how == "swap":
        a, b = file.read_bytes(), other.read_bytes()
        file.write_bytes(b)
        other.write_bytes(a)


DAMAGE_MESSAGES = {
    "delete": "is missing although it is committed",
    "truncate": "cannot be decoded",
    "flip": "cannot be decoded",
    "swap": "holds other rows than were committed",
}


@pytest.mark.parametrize("array", ["embedding", "sample_id", "label"])
@pytest.mark.parametrize("how", ["delete", "truncate", "flip", "swap"])
def test_damaged_chunk_raises_naming_store_array_and_chunk(tmp_path, array, how):
    path = tmp_path / "e.zarr"
    _written(path)
    _damage(how, _chunk(path, array, 3), _chunk(path, array, 4))
    store = open_store(path)  # opening reads no chunk: damage shows where rows are read
    where = rf"embedding store at {re.escape(str(path))}: array '{array}' chunk 3 \(rows 384..512"
    with pytest.raises(StoreIntegrityError, match=where + ".*" + DAMAGE_MESSAGES[how]):
        _readers(store)[array]()
    with pytest.raises(StoreIntegrityError, match=where):
        list(store.iter_chunks(columns=[array]))
    if array == "embedding":  # the Dask path of the cluster stage is verified too
        # (blocks are read in parallel: for a swap either of the two chunks may fail first)
        chunk = "[34]" if how == "swap" else "3"
        with pytest.raises(StoreIntegrityError, match=f"array 'embedding' chunk {chunk} "):
            store.to_dask().sum().compute()
    # undamaged chunks still read, and the whole-store check names the chunk (and, for a swap,
    # the other chunk too)
    assert len(store.read_embeddings(0, 384)) == 384
    report = verify_store(path)
    assert not report.ok and report.status == "damaged"
    assert any(f"array '{array}' chunk 3 " in p for p in report.problems)
    if how == "swap":
        assert any(f"array '{array}' chunk 4 " in p for p in report.problems)


def test_intact_store_verifies_and_fill_value_chunks_are_written(tmp_path):
    path = tmp_path / "e.zarr"
    store = make(path, n_rows=300, dim=8, chunk_rows=128)
    for k in range(store.n_chunks):  # all unlabeled: every label chunk equals the fill value
        lo, hi = store.chunk_bounds(k)
        emb, ids, _ = expected_rows(lo, hi, 8)
        store.write_chunk(k, emb, ids)
    assert all(_chunk(path, "label", k).exists() for k in range(3))
    report = verify_store(path)
    assert report.ok and report.status == "verified", report.summary()
    assert report.chunks_checked == 3 * 3 and report.rows_committed == 300
    assert open_store(path).verified


def test_damaged_assignment_chunk_raises_and_is_reported(tmp_path):
    path = tmp_path / "e.zarr"
    store = _written(path, with_assignments=True)
    out = path / "assignments" / "default"
    (out / "cluster_id" / "c" / "2").unlink()
    where = r"assignment store at .*assignments/default: array 'cluster_id' chunk 2 "
    with pytest.raises(StoreIntegrityError, match=where + ".*missing"):
        open_assignments(store).read_cluster_ids()
    _damage("flip", out / "distance" / "c" / "5")
    with pytest.raises(StoreIntegrityError, match="array 'distance' chunk 5 .*cannot be decoded"):
        open_assignments(store).read_distances()
    report = verify_store(path)
    assert not report.ok and report.status == "damaged"
    (bad,) = report.assignments
    assert bad.status == "damaged" and len(bad.problems) == 2


@pytest.mark.parametrize("which", ["zarr.json", "label/zarr.json"])
def test_broken_metadata_file_names_the_path(tmp_path, which):
    path = tmp_path / "e.zarr"
    _written(path)
    (path / which).write_text('{"zarr_format": 3, "node_')
    with pytest.raises(StoreIntegrityError, match=re.escape(str(path / which))):
        open_store(path)
    assert str(path / which) in verify_store(path).problems[0]


def test_edited_identity_attribute_is_detected(tmp_path):
    path = tmp_path / "e.zarr"
    _written(path)
    # the producer can be checked against the registry's expectation...
    assert open_store(path, expected_encoder="enc-v1", expected_encoder_hash="deadbeef")
    with pytest.raises(StoreContractError, match="encoder_hash='deadbeef', but expected"):
        open_store(path, expected_encoder="enc-v1", expected_encoder_hash="cafe")
    # ...and an edited attribute fails even without one
    edit_attrs(path, lambda a: a.update(encoder_version="enc-v2"))
    with pytest.raises(StoreIntegrityError, match=r"'identity_digest' does not match.*edited"):
        open_store(path)
    report = verify_store(path)
    assert report.status == "damaged" and "identity_digest" in report.problems[0]


def test_store_from_an_older_version_opens_unverified(tmp_path):
    """Stores written before checksums: still readable, reported as unverified."""
    path = tmp_path / "e.zarr"
    _written(path)
    edit_attrs(path, lambda a: [a.pop("integrity"), a.pop("identity_digest")])
    shutil.rmtree(path / "_digests")
    store = open_store(path)
    assert not store.verified
    assert_complete_and_exact(path, 1000, 8)
    report = verify_store(path)
    assert report.ok and report.status == "unverified"
    # a missing chunk cannot be told from fill values there: reported, not silently passed
    _chunk(path, "label", 2).unlink()
    report = verify_store(path)
    assert not report.ok and "array 'label' chunk 2" in report.problems[0]
    assert "unverifiable" in report.problems[0]


def test_sqflow_verify_command_exit_codes(tmp_path, capsys):
    """`sqflow verify STORE` exits 0 on a whole store and 1 naming the chunk once one is gone."""
    from flows.cli import main

    path = tmp_path / "e.zarr"
    store = make(path, n_rows=300, dim=4, chunk_rows=100)
    write_embeddings(store, produce(4))
    assert main(["verify", str(path)]) == 0
    assert "verified" in capsys.readouterr().out
    (path / "embedding" / "c" / "1" / "0").unlink()
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "damaged" in out and "'embedding' chunk 1" in out
