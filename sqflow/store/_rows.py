"""Chunk commit bookkeeping shared by the embedding store and the assignment store.

Both are Zarr groups of row-aligned arrays (all chunked by the same ``chunk_rows`` along axis 0)
plus one tiny ``_committed`` array: a uint8 commit marker per chunk, stored as its own Zarr chunk
(``chunks=(1,)``) so that every marker is a separate key. The protocol for chunk ``k``:

1. write the rows of chunk ``k`` into every data array (each write covers whole chunks, so Zarr
   never reads-modifies-writes a chunk another writer owns);
2. set ``_committed[k] = 1``  -- the commit, one atomic key write;
3. refresh the summary attributes ``rows_committed`` / ``complete`` / ``updated_at``.

``rows_committed`` is the contiguous prefix of committed chunks, in rows. Readers only ever see
that prefix. A writer killed anywhere leaves at worst a data chunk without a marker: it is not
visible, and the next run rewrites it (writes are idempotent). Several writers can work at once as
long as they own disjoint chunks (``pending_chunks(worker, n_workers)``); even two writers writing
the same chunk only write the same bytes twice. The attribute is a lower bound that can lag the
markers when writers race on ``zarr.json``; the markers are the authority.

Verification (``integrity="crc32c+digest-v1"`` in the attributes): every chunk of every array ends
with a CRC32C checksum (a flipped or truncated chunk fails to decode), chunks are written even when
they equal the fill value (so a committed chunk always has a file), and before the marker the
writer records in ``_digests[k]`` a CRC-32 of each data array's rows of chunk ``k``. A read of a
committed chunk recomputes that digest, so a chunk that is missing (Zarr would return fill values),
swapped with another or left over from other data raises :class:`StoreIntegrityError` naming the
store, the array and the chunk. ``identity_digest`` (SHA-256 of the identity attributes) catches an
edited attribute such as ``encoder_version``. Stores written before this (no ``integrity``
attribute) still open and read as before; they are reported as unverified.

:func:`create_or_resume` is the one create/resume/overwrite protocol of both kinds of store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import zarr
import zarr.codecs
from pydantic import BaseModel
from zarr.abc.store import Store
from zarr.core.sync import sync

from data_contracts.store import STORE_CONTRACT_VERSION

from ._zarr_io import (
    StoreContractError,
    StoreIntegrityError,
    make_compressors,
    producer_version,
    try_open_group,
    utc_now,
    validate_attrs,
)

log = logging.getLogger(__name__)

MARKERS = "_committed"
DIGESTS = "_digests"
#: Value of the ``integrity`` attribute of stores written with checksums and digests.
INTEGRITY = "crc32c+digest-v1"
#: Zarr array config: write every chunk, even one equal to the fill value (an all-unlabeled
#: ``label`` chunk), so that a committed chunk without a file is always damage.
_ARRAY_CONFIG = {"write_empty_chunks": True}


def chunk_digest(values: np.ndarray, dtype: Any) -> int:
    """CRC-32 of one chunk's rows as stored: numbers as their bytes in the array's dtype,
    strings as their UTF-8 text joined by a separator (with the row count)."""
    a = np.asarray(values)
    if a.dtype.kind in ("T", "U", "O"):
        items = a.tolist()
        text = "\x1f".join(items if a.dtype.kind != "O" else map(str, items))
        data = len(a).to_bytes(8, "little") + text.encode("utf-8", "surrogatepass")
    else:
        # the array's own buffer: the same bytes as ``tobytes()`` without copying them (a
        # copy of every chunk read on the pass's path, measured ~2 ms per 4 MiB chunk on a
        # Dask worker)
        data = np.ascontiguousarray(a, dtype=dtype)
    return zlib.crc32(data)


def identity_digest(attrs: Mapping[str, Any], fields: Sequence[str]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``fields`` of ``attrs``."""
    doc = {f: attrs.get(f) for f in fields}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class RowGroup:
    """Base of :class:`~sqflow.store.EmbeddingStore` and :class:`~sqflow.store.AssignmentStore`:
    chunk geometry, commit markers and the ``rows_committed`` summary."""

    _what: ClassVar[str] = "row group"
    #: names of the row-aligned data arrays (all chunked by ``chunk_rows`` along axis 0)
    _data_arrays: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        group: zarr.Group,
        metadata: Any,
        *,
        location: str,
        storage_options: dict[str, Any] | None,
        writable: bool,
    ) -> None:
        self._group = group
        self.metadata = metadata
        self.location = location
        self.storage_options = storage_options
        self.writable = writable
        # every chunk written, even one equal to the fill value (Zarr's config is not stored
        # with the array, so it is set again on every open)
        opened = {}
        for name in (*self._data_arrays, MARKERS, DIGESTS):
            try:
                opened[name] = group[name].with_config(_ARRAY_CONFIG)
            except KeyError:
                if name == DIGESTS:  # absent in stores written before verification
                    continue
                raise StoreContractError(
                    f"{self._what} at {location}: array {name!r} is missing; a complete "
                    f"store holds {[*self._data_arrays, MARKERS]}"
                ) from None
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                raise StoreIntegrityError(
                    f"{self._what} at {location}: the metadata of array {name!r} "
                    f"({location.rstrip('/')}/{name}/zarr.json) cannot be read "
                    f"({type(exc).__name__}: {exc}); restore it or rewrite the store"
                ) from exc
        self._markers = opened[MARKERS]
        self._arrays = {name: opened[name] for name in self._data_arrays}
        self._digests = opened.get(DIGESTS)
        if self._markers.shape != (self.n_chunks,):
            raise StoreContractError(
                f"{self._what} at {location}: array {MARKERS!r} has shape {self._markers.shape}, "
                f"expected ({self.n_chunks},) = ceil(n_rows / chunk_rows)"
            )
        for name, arr in self._arrays.items():
            if arr.shape[0] != self.n_rows or arr.chunks[0] != self.chunk_rows:
                raise StoreContractError(
                    f"{self._what} at {location}: array {name!r} has shape {arr.shape} and "
                    f"chunks {arr.chunks}; the attributes say n_rows={self.n_rows}, "
                    f"chunk_rows={self.chunk_rows}"
                )
        self._check_integrity_setup()
        # Chunks this object knows to be committed. Markers are never unset (short of
        # overwriting the whole store), so a cached True stays true.
        self._known = np.zeros(self.n_chunks, dtype=bool)
        self._prefix = 0  # number of leading committed chunks known
        self._recorded: dict[int, np.ndarray] = {}  # digests read so far, by chunk

    # ------------------------------------------------------------------ integrity
    #: attributes covered by ``identity_digest`` (set by each kind of store)
    _identity_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def verified(self) -> bool:
        """True when the store carries checksums and digests (written by this sqflow or later);
        False for a store written by an older version, whose chunks cannot be verified."""
        return getattr(self.metadata, "integrity", None) is not None

    def _check_integrity_setup(self) -> None:
        if not self.verified:
            return
        if self._digests is None:
            raise StoreIntegrityError(
                f"{self._what} at {self.location}: array {DIGESTS!r} is missing although the "
                f"attributes say integrity={self.metadata.integrity!r}; the store is damaged"
            )
        if self._digests.shape != (self.n_chunks, len(self._data_arrays)):
            raise StoreIntegrityError(
                f"{self._what} at {self.location}: array {DIGESTS!r} has shape "
                f"{self._digests.shape}; expected ({self.n_chunks}, {len(self._data_arrays)})"
            )
        attrs = self.metadata.model_dump(mode="json")
        want = identity_digest(attrs, self._identity_fields)
        if attrs.get("identity_digest") != want:
            raise StoreIntegrityError(
                f"{self._what} at {self.location}: attribute 'identity_digest' does not match "
                f"the identity attributes {list(self._identity_fields)} (one was edited after "
                "the store was written, e.g. encoder_version); the rows cannot be trusted to "
                "come from the recorded producer: rewrite the store"
            )

    def _chunk_file(self, name: str, k: int) -> str:
        arr = self._group[name] if name in (MARKERS, DIGESTS) else self._arrays[name]
        key = arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))
        return f"{arr.store_path.path}/{key}" if arr.store_path.path else key

    def _chunk_exists(self, name: str, k: int) -> bool:
        arr = self._arrays[name]
        return bool(sync(arr.store_path.store.exists(self._chunk_file(name, k))))

    def _chunk_where(self, name: str, k: int) -> str:
        lo, hi = self.chunk_bounds(k)
        return (
            f"{self._what} at {self.location}: array {name!r} chunk {k} (rows {lo}..{hi}, "
            f"key {self._chunk_file(name, k)!r})"
        )

    def _recorded_digest(self, k: int) -> np.ndarray:
        got = self._recorded.get(k)
        if got is None:
            try:
                got = np.asarray(self._digests[k], dtype=np.uint32)
            except Exception as exc:  # checksum or decode failure of the digest chunk itself
                raise StoreIntegrityError(
                    f"{self._what} at {self.location}: array {DIGESTS!r} chunk {k} cannot be "
                    f"decoded ({type(exc).__name__}: {exc})"
                ) from exc
            if not got.any() and not sync(
                self._digests.store_path.store.exists(self._chunk_file(DIGESTS, k))
            ):
                raise StoreIntegrityError(
                    f"{self._what} at {self.location}: array {DIGESTS!r} chunk {k} is missing "
                    "although the chunk is committed; the store is damaged"
                )
            self._recorded[k] = got
        return got

    def _read_chunk(self, name: str, k: int) -> np.ndarray:
        """All rows of chunk ``k`` of data array ``name``, verified when the store is: a chunk
        that cannot be decoded (checksum), is missing, or holds rows other than those committed
        raises :class:`StoreIntegrityError` naming the store, array and chunk."""
        lo, hi = self.chunk_bounds(k)
        arr = self._arrays[name]
        try:
            values = np.asarray(arr[lo:hi])
        except Exception as exc:  # zarr/numcodecs raise several types for damaged bytes
            raise StoreIntegrityError(
                f"{self._chunk_where(name, k)} cannot be decoded ({type(exc).__name__}: {exc}); "
                "its file is damaged (flipped bytes or truncated): rewrite the store"
            ) from exc
        if self.verified:
            want = int(self._recorded_digest(k)[self._data_arrays.index(name)])
            if chunk_digest(values, arr.dtype) != want:
                if not self._chunk_exists(name, k):
                    raise StoreIntegrityError(
                        f"{self._chunk_where(name, k)} is missing although it is committed "
                        "(Zarr would return fill values): rewrite the store"
                    )
                raise StoreIntegrityError(
                    f"{self._chunk_where(name, k)} holds other rows than were committed (its "
                    "digest differs from the one recorded at commit: chunk files swapped or "
                    "overwritten): rewrite the store"
                )
        return values

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of ``name`` through :meth:`_read_chunk` (whole chunks read and
        verified, then sliced). The caller checks the rows are committed."""
        if stop <= start:
            return np.asarray(self._arrays[name][start:stop])
        cr = self.chunk_rows
        first, last = start // cr, (stop - 1) // cr
        parts = [self._read_chunk(name, k) for k in range(first, last + 1)]
        rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return rows[start - first * cr : stop - first * cr]

    def verify(self) -> list[str]:
        """Check every committed chunk of every array; return the problems found (messages
        naming store, array and chunk; empty when all is well). Reads the whole store once."""
        problems: list[str] = []
        try:
            done = self.committed_chunks()
        except Exception as exc:
            return [f"{self._what} at {self.location}: array {MARKERS!r} cannot be read ({exc})"]
        attr_rows = int(self._group.attrs.get("rows_committed", 0))
        if attr_rows > self._prefix_rows():
            problems.append(
                f"{self._what} at {self.location}: attribute rows_committed={attr_rows} but the "
                f"commit markers ({MARKERS!r}) commit only {self._prefix_rows()} rows: marker "
                "chunks are missing"
            )
        for k in np.flatnonzero(done):
            for name in self._data_arrays:
                try:
                    self._read_chunk(name, int(k))
                except StoreIntegrityError as exc:
                    problems.append(str(exc))
                if not self.verified and not self._chunk_exists(name, int(k)):
                    problems.append(
                        f"{self._chunk_where(name, int(k))} has no file: written by an older "
                        "sqflow that skipped chunks equal to the fill value, so this may be "
                        "legitimate fill values or a lost chunk (unverifiable)"
                    )
        return problems

    # ------------------------------------------------------------------ geometry
    @property
    def n_rows(self) -> int:
        """Rows preallocated (the planned total N)."""
        return int(self.metadata.n_rows)

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk (every array is chunked by this many rows)."""
        return int(self.metadata.chunk_rows)

    @property
    def n_chunks(self) -> int:
        """``ceil(n_rows / chunk_rows)``."""
        return -(-self.n_rows // self.chunk_rows)

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of chunk ``k`` (the last chunk may be short)."""
        if not 0 <= k < self.n_chunks:
            raise IndexError(f"chunk index k={k} out of range; valid: 0..{self.n_chunks - 1}")
        start = k * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_rows)

    # ------------------------------------------------------------------ commit state
    def committed_chunks(self) -> np.ndarray:
        """Bool array (n_chunks,): which chunks are committed, read fresh from the store."""
        if self.n_chunks:
            self._known |= np.asarray(self._markers[:], dtype=bool)
        self._advance_prefix(probe=False)
        return self._known.copy()

    @property
    def rows_committed(self) -> int:
        """Rows in the contiguous prefix of committed chunks (fresh from the store)."""
        self.committed_chunks()
        return self._prefix_rows()

    @property
    def is_complete(self) -> bool:
        """True when every chunk is committed."""
        return self.rows_committed == self.n_rows

    def pending_chunks(self, worker: int = 0, n_workers: int = 1) -> list[int]:
        """Uncommitted chunk indices owned by ``worker`` out of ``n_workers``.

        Chunk ``k`` belongs to worker ``k % n_workers``, so concurrent writers started with
        distinct ``worker`` values (0..n_workers-1) never write the same chunk. A rerun with
        ``n_workers=1`` picks up whatever any crashed worker left.
        """
        if n_workers < 1:
            raise ValueError(f"n_workers={n_workers} must be >= 1")
        if not 0 <= worker < n_workers:
            raise ValueError(f"worker={worker} out of range; valid: 0..{n_workers - 1}")
        done = self.committed_chunks()
        return [k for k in range(worker, self.n_chunks, n_workers) if not done[k]]

    def _prefix_rows(self) -> int:
        return min(self._prefix * self.chunk_rows, self.n_rows)

    def _advance_prefix(self, probe: bool) -> None:
        """Move the known prefix forward; with ``probe`` read single markers past it (cheap: one
        key per step) so that chunks committed by other writers are counted too."""
        while self._prefix < self.n_chunks:
            if not self._known[self._prefix]:
                if not probe or not self._markers[self._prefix]:
                    break
                self._known[self._prefix] = True
            self._prefix += 1

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError(
                f"{self._what} at {self.location} was opened read-only; open it with mode='r+' "
                "(or through the create/open-writer function) to write"
            )

    def _chunk_spans(self, start_row: int, n: int) -> list[tuple[int, int, int]]:
        """Split rows ``[start_row, start_row + n)`` into whole chunks: ``(k, lo, hi)`` with
        ``lo``/``hi`` offsets into the caller's arrays. Refuses unaligned spans, because a partial
        chunk write would be a read-modify-write racing with other writers."""
        stop = start_row + n
        if start_row % self.chunk_rows:
            raise ValueError(
                f"start_row={start_row} is not chunk-aligned; valid: a multiple of "
                f"chunk_rows={self.chunk_rows}"
            )
        if n <= 0 or stop > self.n_rows:
            raise ValueError(
                f"rows [{start_row}, {stop}) do not fit the store's n_rows={self.n_rows} "
                "(need at least one row)"
            )
        if stop % self.chunk_rows and stop != self.n_rows:
            raise ValueError(
                f"rows [{start_row}, {stop}) end inside a chunk; valid: a length that is a "
                f"multiple of chunk_rows={self.chunk_rows} or that ends at n_rows={self.n_rows}"
            )
        spans = []
        for k in range(start_row // self.chunk_rows, -(-stop // self.chunk_rows)):
            lo, hi = self.chunk_bounds(k)
            spans.append((k, lo - start_row, hi - start_row))
        return spans

    def _commit_chunk(self, k: int, rows: Mapping[str, np.ndarray]) -> None:
        """Step 2 and 3 of the protocol; call only after chunk ``k``'s data is written.
        ``rows``: the values just written, by array name (their digests are recorded first)."""
        if self._digests is not None:
            digest = np.array(
                [chunk_digest(rows[n], self._arrays[n].dtype) for n in self._data_arrays],
                dtype=np.uint32,
            )
            self._digests[k] = digest
            self._recorded[k] = digest
        self._markers[k] = 1
        self._known[k] = True
        self._advance_prefix(probe=True)
        self._write_summary()

    def _write_summary(self) -> int:
        rows = self._prefix_rows()
        updated = utc_now()
        self._group.attrs.update(
            {
                "rows_committed": rows,
                "complete": rows == self.n_rows,
                "updated_at": updated.isoformat(),
            }
        )
        self.metadata = self.metadata.model_copy(
            update={"rows_committed": rows, "complete": rows == self.n_rows, "updated_at": updated}
        )
        return rows

    def refresh_summary(self) -> int:
        """Re-read every marker and rewrite the summary attributes; returns rows_committed.
        Call after concurrent writers finish so the attribute matches the markers exactly."""
        self._require_writable()
        self.committed_chunks()
        return self._write_summary()

    # ------------------------------------------------------------------ reading helpers
    def _check_read_range(self, start: int, stop: int | None) -> tuple[int, int]:
        committed = self.rows_committed
        stop = committed if stop is None else stop
        if not 0 <= start <= stop <= committed:
            raise ValueError(
                f"rows [{start}, {stop}) are not committed; valid: 0 <= start <= stop <= "
                f"rows_committed={committed} (of n_rows={self.n_rows})"
            )
        return start, stop

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.location!r}, n_rows={self.n_rows}, "
            f"chunk_rows={self.chunk_rows}, rows_committed={self._prefix_rows()}+)"
        )


@dataclass(frozen=True)
class ArraySpec:
    """One row-aligned data array to create: ``shape`` starts with the row count, ``chunks``
    with ``chunk_rows``."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: Any
    fill_value: Any
    dimension_names: tuple[str, ...]


def create_or_resume(
    cls: type[RowGroup],
    zstore: Store,
    group_path: str,
    *,
    location: str,
    model: type[BaseModel],
    identity: Mapping[str, Any],
    resume_fields: Sequence[str],
    fields: Mapping[str, Any],
    arrays: Sequence[ArraySpec],
    n_rows: int,
    chunk_rows: int,
    compression: str,
    compression_level: int,
    if_exists: Literal["resume", "error", "overwrite"],
    storage_options: dict[str, Any] | None,
    caller: str,
) -> RowGroup:
    """The one create / resume / overwrite protocol of both kinds of store.

    A group already at ``group_path``: ``if_exists="error"`` raises FileExistsError;
    ``"resume"`` validates its attributes against ``model``, requires every field of
    ``resume_fields`` to equal ``identity`` (else :class:`StoreContractError` naming the field and
    ``caller``) and returns it with its committed chunks, or finishes an interrupted creation
    (no ``_committed`` array yet: nothing can have been committed); ``"overwrite"`` replaces it.
    Otherwise the group is created: attributes (``identity`` + ``fields`` + bookkeeping), the
    data ``arrays`` (checksummed codecs, every chunk written), ``_digests``, and last
    ``_committed``, whose presence marks creation as finished.
    """
    if if_exists not in ("resume", "error", "overwrite"):
        raise ValueError(f"if_exists={if_exists!r}; valid: 'resume', 'error', 'overwrite'")
    what = cls._what
    existing = try_open_group(zstore, group_path, location=location)
    created_at = utc_now()
    if existing is not None:
        if if_exists == "error":
            raise FileExistsError(
                f"an {what} already exists at {location}; pass if_exists='resume' to continue "
                "it or 'overwrite' to replace it"
            )
        if if_exists == "resume":
            meta = validate_attrs(
                model,
                dict(existing.attrs),
                what=what,
                location=location,
                supported=STORE_CONTRACT_VERSION,
            )
            for field in resume_fields:
                have = getattr(meta, field)
                if have != identity[field]:
                    raise StoreContractError(
                        f"{what} at {location} has {field}={have!r} but {caller} "
                        f"{field}={identity[field]!r}; resume needs the same value (use "
                        "if_exists='overwrite' or another path/name)"
                    )
            if MARKERS in existing:
                store = cls(
                    existing,
                    meta,
                    location=location,
                    storage_options=storage_options,
                    writable=True,
                )
                log.info(
                    "resuming %s %s: %d of %d rows committed",
                    what,
                    location,
                    store.rows_committed,
                    store.n_rows,
                )
                return store
            log.info("%s %s: finishing an interrupted creation", what, location)
            created_at = meta.created_at
    attrs = {
        **fields,
        **identity,
        "contract_version": STORE_CONTRACT_VERSION,
        "rows_committed": 0,
        "complete": False,
        "created_at": created_at,
        "updated_at": max(utc_now(), created_at),
        "producer_version": producer_version(),
        "integrity": INTEGRITY,
    }
    probe = model.model_validate(attrs).model_dump(mode="json")
    attrs["identity_digest"] = identity_digest(probe, cls._identity_fields)
    meta = model.model_validate(attrs)
    # overwrite only what we know is a store (interrupted creation or if_exists="overwrite"):
    # never wipe an unrelated folder that merely has no zarr.json.
    group = zarr.create_group(
        zstore,
        path=group_path,
        overwrite=existing is not None,
        attributes=meta.model_dump(mode="json"),
        zarr_format=3,
    )
    compressors = make_compressors(compression, compression_level)
    for spec in arrays:
        group.create_array(
            spec.name,
            shape=spec.shape,
            chunks=spec.chunks,
            dtype=spec.dtype,
            fill_value=spec.fill_value,
            compressors=compressors,
            overwrite=True,
            dimension_names=spec.dimension_names,
            config=_ARRAY_CONFIG,
        )
    n_chunks = -(-n_rows // chunk_rows)
    group.create_array(
        DIGESTS,
        shape=(n_chunks, len(arrays)),
        chunks=(1, len(arrays)),
        dtype="uint32",
        fill_value=0,
        compressors=[zarr.codecs.Crc32cCodec()],
        overwrite=True,
        dimension_names=("chunk", "array"),
        config=_ARRAY_CONFIG,
    )
    # Created last: its presence marks the store as fully initialised (see "resume" above).
    group.create_array(
        MARKERS,
        shape=(n_chunks,),
        chunks=(1,),
        dtype="uint8",
        fill_value=0,
        compressors=[zarr.codecs.Crc32cCodec()],
        overwrite=True,
        dimension_names=("chunk",),
        config=_ARRAY_CONFIG,
    )
    log.info("created %s %s: %d rows, chunk_rows=%d", what, location, n_rows, chunk_rows)
    return cls(group, meta, location=location, storage_options=storage_options, writable=True)


CONTRACT_VERSION = STORE_CONTRACT_VERSION
