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
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import zarr

from data_contracts.store import STORE_CONTRACT_VERSION

from ._zarr_io import StoreContractError, utc_now

log = logging.getLogger(__name__)

MARKERS = "_committed"


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
        try:
            self._markers = group[MARKERS]
            self._arrays = {name: group[name] for name in self._data_arrays}
        except KeyError as exc:
            raise StoreContractError(
                f"{self._what} at {location}: array {exc.args[0]!r} is missing; a complete "
                f"store holds {[*self._data_arrays, MARKERS]}"
            ) from None
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
        # Chunks this object knows to be committed. Markers are never unset (short of
        # overwriting the whole store), so a cached True stays true.
        self._known = np.zeros(self.n_chunks, dtype=bool)
        self._prefix = 0  # number of leading committed chunks known

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

    def _commit_chunk(self, k: int) -> None:
        """Step 2 and 3 of the protocol; call only after chunk ``k``'s data is written."""
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


CONTRACT_VERSION = STORE_CONTRACT_VERSION
