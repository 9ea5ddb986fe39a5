"""What the verified embedding store costs: write and read throughput of a verified sqflow
store vs plain Zarr stores of the same data, side by side in one run.

Three layouts of the same rows (``embedding`` float32 (n, d), ``sample_id`` text, ``label``
int64; the same chunk rows along axis 0; zstd level 3 everywhere):

* ``plain``: ``zarr.create_array`` with ``ZstdCodec(level=3)``, chunks written by slice
  assignment, read back by slices: what a user of Zarr alone would do;
* ``plain+crc``: the same with the verified store's codecs (zstd frame checksum + CRC32C of
  every chunk), nothing else: the codec share of the cost;
* ``verified``: :func:`sqflow.store.create_store` + ``write_chunk`` (codecs, every chunk
  written even when equal to the fill value, a CRC-32 digest per chunk and array recorded at
  commit, the commit marker and the ``rows_committed`` summary), read by ``iter_chunks``
  (decode, checksum, recompute and compare the digest of every chunk).

Reads are timed for all three columns and for ``embedding`` alone (what the cluster stage and
the report read). Each figure is the median of ``--repeats`` runs; writes go to a fresh folder
each time, reads come from the page cache (the files were just written): the figures are the
CPU cost of the checks, not disk speed. Ratios are verified / plain.

Usage::

    python bench/store_integrity.py                  # 500k rows x 64, 7 repeats (~40 s)
    python bench/store_integrity.py --rows 50000 --repeats 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import machine, print_table, write_results  # noqa: E402

COLUMNS = ("embedding", "sample_id", "label")


def make_chunks(n_rows: int, dim: int, chunk_rows: int, seed: int) -> list[tuple]:
    """(lo, hi, embedding, sample_id, label) per chunk; a third of the rows unlabeled (-1)."""
    out = []
    for lo in range(0, n_rows, chunk_rows):
        hi = min(lo + chunk_rows, n_rows)
        rng = np.random.default_rng([seed, lo])
        emb = rng.standard_normal((hi - lo, dim)).astype(np.float32)
        ids = np.array([f"mnist-all:{i:09d}" for i in range(lo, hi)], dtype=object)
        lab = rng.integers(-1, 10, size=hi - lo).astype(np.int64)
        out.append((lo, hi, emb, ids, lab))
    return out


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------ plain Zarr
def _plain_codecs(crc: bool) -> list:
    import zarr.codecs

    if crc:
        return [zarr.codecs.ZstdCodec(level=3, checksum=True), zarr.codecs.Crc32cCodec()]
    return [zarr.codecs.ZstdCodec(level=3)]


def write_plain(path: Path, chunks: list[tuple], n_rows: int, dim: int, chunk_rows: int, crc: bool):
    import zarr

    root = zarr.open_group(str(path), mode="w")
    comp = _plain_codecs(crc)
    arrays = {
        "embedding": root.create_array(
            "embedding",
            shape=(n_rows, dim),
            chunks=(chunk_rows, dim),
            dtype="float32",
            compressors=comp,
        ),
        "sample_id": root.create_array(
            "sample_id", shape=(n_rows,), chunks=(chunk_rows,), dtype=str, compressors=comp
        ),
        "label": root.create_array(
            "label",
            shape=(n_rows,),
            chunks=(chunk_rows,),
            dtype="int64",
            fill_value=-1,
            compressors=comp,
        ),
    }
    for lo, hi, emb, ids, lab in chunks:
        arrays["embedding"][lo:hi] = emb
        arrays["sample_id"][lo:hi] = ids
        arrays["label"][lo:hi] = lab


def read_plain(path: Path, n_rows: int, chunk_rows: int, columns: tuple[str, ...]) -> int:
    import zarr

    root = zarr.open_group(str(path), mode="r")
    arrays = {c: root[c] for c in columns}
    n = 0
    for lo in range(0, n_rows, chunk_rows):
        hi = min(lo + chunk_rows, n_rows)
        for c in columns:
            n += len(np.asarray(arrays[c][lo:hi]))
    return n


# ------------------------------------------------------------------------------ verified
def write_verified(path: Path, chunks: list[tuple], n_rows: int, dim: int, chunk_rows: int):
    from sqflow.store import create_store

    store = create_store(
        path,
        n_rows=n_rows,
        dim=dim,
        dataset="bench-integrity",
        encoder_version="bench",
        encoder_hash="none",
        source_manifest_hash="bench",
        chunk_rows=chunk_rows,
        compression="zstd",
        compression_level=3,
        if_exists="overwrite",
    )
    for k, (_lo, _hi, emb, ids, lab) in enumerate(chunks):
        store.write_chunk(k, emb, ids, lab)
    assert store.is_complete


def read_verified(path: Path, columns: tuple[str, ...]) -> int:
    from sqflow.store import open_store

    store = open_store(path)
    assert store.verified
    n = 0
    for ch in store.iter_chunks(columns=columns):
        n += sum(len(getattr(ch, c)) for c in columns)
    return n


# ------------------------------------------------------------------------------ timing
def _median_seconds(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--chunk-rows", type=int, default=None, help="default: the store's default")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="store_integrity", help="results name (bench/results/)")
    args = ap.parse_args(argv)
    from sqflow.store import default_chunk_rows

    n, dim = args.rows, args.dim
    cr = args.chunk_rows or default_chunk_rows(dim)
    chunks = make_chunks(n, dim, cr, args.seed)
    mib = (n * dim * 4 + sum(len(s) for c in chunks for s in c[3]) + n * 8) / 2**20
    tmp = Path(tempfile.mkdtemp(prefix="sqflow-bench-integrity-"))
    layouts = ("plain", "plain+crc", "verified")
    paths = {name: tmp / f"{name.replace('+', '_')}.zarr" for name in layouts}
    writers = {
        "plain": lambda: write_plain(paths["plain"], chunks, n, dim, cr, crc=False),
        "plain+crc": lambda: write_plain(paths["plain+crc"], chunks, n, dim, cr, crc=True),
        "verified": lambda: write_verified(paths["verified"], chunks, n, dim, cr),
    }
    results: dict[str, dict] = {}
    try:
        for name in layouts:  # interleaved per repeat would mix page-cache states: one by one
            # rmtree before each write: every repeat writes a fresh store
            results[name] = {
                "write_s": _median_seconds(
                    writers[name],
                    args.repeats,
                    before=lambda p=paths[name]: shutil.rmtree(p, ignore_errors=True),
                )
            }
            results[name]["disk_mib"] = disk_bytes(paths[name]) / 2**20
        for name in layouts:
            for label, cols in (("read_all_s", COLUMNS), ("read_embedding_s", ("embedding",))):
                if name == "verified":
                    fn = lambda c=cols: read_verified(paths["verified"], c)  # noqa: E731
                else:
                    fn = lambda p=paths[name], c=cols: read_plain(p, n, cr, c)  # noqa: E731
                want = n * len(cols)
                got = fn()
                if got != want:
                    raise RuntimeError(f"{name}: read {got} values, expected {want}")
                results[name][label] = _median_seconds(fn, args.repeats)
        # the stores hold the same rows (checked once, outside the timing)
        import zarr

        from sqflow.store import open_store

        plain = zarr.open_group(str(paths["plain"]), mode="r")
        ver = open_store(paths["verified"])
        np.testing.assert_array_equal(np.asarray(plain["embedding"][:]), ver.read_embeddings())
        np.testing.assert_array_equal(np.asarray(plain["label"][:]), ver.read_labels())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = results["plain"]
    rows = []
    for name in layouts:
        r = results[name]
        rows.append(
            {
                "layout": name,
                "write s": r["write_s"],
                "write MiB/s": mib / r["write_s"],
                "write x plain": r["write_s"] / base["write_s"],
                "read all s": r["read_all_s"],
                "read all x plain": r["read_all_s"] / base["read_all_s"],
                "read emb s": r["read_embedding_s"],
                "read emb x plain": r["read_embedding_s"] / base["read_embedding_s"],
                "disk MiB": r["disk_mib"],
            }
        )
    print(
        f"\n{n} rows x {dim} (float32) + sample_id + label, {len(chunks)} chunks of {cr} rows, "
        f"{mib:.1f} MiB raw; median of {args.repeats}\n"
    )
    table = print_table(rows, list(rows[0]))
    payload = {
        "benchmark": "store_integrity",
        "machine": machine(),
        "params": {
            "rows": n,
            "dim": dim,
            "chunk_rows": cr,
            "n_chunks": len(chunks),
            "raw_mib": mib,
            "repeats": args.repeats,
            "compression": "zstd level 3",
            "statistic": "median seconds",
            "reads": "from the page cache (files just written)",
        },
        "results": results,
        "ratios_vs_plain": {
            name: {
                "write": results[name]["write_s"] / base["write_s"],
                "read_all": results[name]["read_all_s"] / base["read_all_s"],
                "read_embedding": results[name]["read_embedding_s"] / base["read_embedding_s"],
            }
            for name in layouts
        },
        "table": table,
    }
    write_results(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
