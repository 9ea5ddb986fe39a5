"""End-to-end check of an embedding store and its assignment outputs (``sqflow verify STORE``).

Every committed chunk of every array is read and checked: it must decode (CRC32C / zstd
checksums), exist (Zarr would return fill values for a missing chunk) and hold the rows that were
committed (per-chunk digest recorded at commit time). The attributes must follow the contract and
match their ``identity_digest``. Problems are collected, not raised, so one report lists them all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import zarr

from ._rows import RowGroup
from ._zarr_io import PathLike, StoreContractError, StoreNotFoundError, location_string
from .assignments import open_assignments
from .embeddings import open_store

Status = Literal["verified", "unverified", "damaged"]


@dataclass
class StoreReport:
    """Result of :func:`verify_store` for one group (the embedding store or one assignment
    output). ``status``: "verified" (every committed chunk checked, no problem), "unverified"
    (written by an older sqflow without checksums/digests: only presence and decoding were
    checked, and a missing chunk cannot be told from fill values), "damaged" (``problems`` names
    each store, array and chunk)."""

    location: str
    kind: str
    status: Status
    n_rows: int | None = None
    rows_committed: int | None = None
    chunks_checked: int = 0
    problems: list[str] = field(default_factory=list)
    assignments: list[StoreReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when neither this group nor any assignment output has a problem."""
        return not self.problems and all(a.ok for a in self.assignments)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        """Human-readable lines: one per group, then one per problem."""
        lines = []
        for rep in (self, *self.assignments):
            lines.append(
                f"{rep.status:<10} {rep.kind} {rep.location}: {rep.rows_committed} of "
                f"{rep.n_rows} rows committed, {rep.chunks_checked} chunk(s) checked"
            )
            lines += [f"  PROBLEM: {p}" for p in rep.problems]
        return "\n".join(lines)


def _check(group: RowGroup) -> StoreReport:
    problems = group.verify()
    done = int(group.committed_chunks().sum())
    status: Status = "damaged" if problems else ("verified" if group.verified else "unverified")
    return StoreReport(
        location=group.location,
        kind=group._what,
        status=status,
        n_rows=group.n_rows,
        rows_committed=group.rows_committed,
        chunks_checked=done * len(group._data_arrays),
        problems=problems,
    )


def verify_store(path: PathLike, *, storage_options: dict[str, Any] | None = None) -> StoreReport:
    """Check the embedding store at ``path`` (local folder or fsspec URL) and every assignment
    output inside it (``assignments/<name>``), end to end. Reads every committed chunk once.

    Returns a :class:`StoreReport` (``.ok``, ``.status``, ``.problems``, ``.summary()``); a
    store that cannot even be opened (no store, broken ``zarr.json``, contract violation, edited
    identity attribute) gives a "damaged" report whose problem is the error. Raises only
    :class:`StoreNotFoundError` when nothing is at ``path``.
    """
    location = location_string(path)
    try:
        store = open_store(path, storage_options=storage_options)
    except StoreNotFoundError:
        raise
    except (StoreContractError, OSError, ValueError) as exc:
        return StoreReport(location, "embedding store", "damaged", problems=[str(exc)])
    report = _check(store)
    try:
        holder = store.zarr_group.get("assignments")
        names = sorted(holder.group_keys()) if isinstance(holder, zarr.Group) else []
    except (ValueError, KeyError) as exc:
        report.problems.append(
            f"embedding store at {location}: group 'assignments' cannot be read ({exc})"
        )
        names = []
    for name in names:
        where = f"{location.rstrip('/')}/assignments/{name}"
        try:
            out = open_assignments(store, name=name, storage_options=storage_options)
        except (StoreContractError, StoreNotFoundError, OSError, ValueError) as exc:
            report.assignments.append(
                StoreReport(where, "assignment store", "damaged", problems=[str(exc)])
            )
            continue
        report.assignments.append(_check(out))
    if report.status == "verified" and not report.ok:
        report.status = "damaged"  # an assignment output is damaged
    return report


__all__ = ["StoreReport", "verify_store"]
