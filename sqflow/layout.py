"""Where a pipeline's outputs live, the model registry and the per-output lock.

Layout under one output folder (``./sqflow-output`` by default)::

    models/CURRENT                       the current encoder version (one line)
    models/<version>/encoder.pt(.json)   checkpoint + verified sidecar; model.json = registry record
    models/<version>/rows.parquet        sample ids the version trained on (role train: training
                                         and its validation split) and its reference rows
    models/reference/<version>/          the reference set embedded with that version
                                         (embeddings.zarr) and its SQ centers (centers.npy): they
                                         belong to the version, so they live in the registry,
                                         which several output folders may share (models_dir)
    runs/<run_id>/                       one folder per nightly run:
        manifest.parquet, manifest.json, quarantine.parquet
        embeddings.zarr                  embedding store (assignments/<run_id> inside)
        checkpoints/pass-NNN.npy         SQ centers after each pass
        centers.npy, run.json, summary.md, plots/*.png
        bi/<table>.parquet               BI rows of the monitor/report, private until publish
    published/<table>/run_date=YYYY-MM-DD/<run_id>.parquet   runs, cluster_centers, assignments,
                                         quarantine, drift_reports, cluster_report (one file per
                                         run; the runs file, written last, commits the run)
    published/_sqflow_journal/<run_id>.json  a publish in progress (sqflow.bi.journal)
    sqflow.duckdb                        the same tables as DuckDB tables for BI tools (sqflow.bi)
    .nightly.lock                        held by the running nightly flow
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from data_contracts.run_record import RunRecord, RunRecordError
from data_contracts.settings import PipelineSettings

from .atomic_files import atomic_write_text
from .fault_points import kill_point
from .identifiers import check_identifier

_VERSION = re.compile(r"^triplet-v(\d{4})$")


@dataclass(frozen=True)
class OutputLayout:
    """Paths of one output folder (see the module docstring)."""

    root: Path
    models_dir: Path

    @classmethod
    def at(
        cls, root: str | os.PathLike[str], models_dir: str | os.PathLike[str] | None = None
    ) -> OutputLayout:
        r = Path(root).expanduser().resolve()
        m = Path(models_dir).expanduser().resolve() if models_dir else r / "models"
        return cls(r, m)

    @classmethod
    def of(cls, settings: PipelineSettings) -> OutputLayout:
        """The layout of a run's settings (``output_dir``, ``models_dir``)."""
        return cls.at(settings.output_dir, settings.models_dir)

    def run_dir(self, run_id: str) -> Path:
        """``<root>/runs/<run_id>``; ``run_id`` must be a safe identifier (every stage writes
        under it: ``../x`` would write outside the output folder)."""
        return self.root / "runs" / check_identifier(run_id, "run_id")

    def reference_store(self, version: str) -> Path:
        return self.models_dir / "reference" / version / "embeddings.zarr"

    @property
    def published(self) -> Path:
        return self.root / "published"

    @property
    def duckdb_path(self) -> Path:
        return self.root / "sqflow.duckdb"

    @property
    def lock_path(self) -> Path:
        return self.root / ".nightly.lock"

    def run_records(self) -> list[RunRecord]:
        """``run.json`` of every earlier run, oldest first (unreadable ones skipped)."""
        out = []
        for p in sorted((self.root / "runs").glob("*/run.json")):
            try:
                out.append(RunRecord.load(p))
            except (OSError, RunRecordError):
                continue
        return sorted(out, key=lambda r: r.started_at)

    def seen_sample_ids(self, dataset: str) -> set[str]:
        """sample ids in the manifests of earlier COMPLETED runs of ``dataset`` (incremental)."""
        import pandas as pd

        seen: set[str] = set()
        for rec in self.run_records():
            if not rec.completed or rec.dataset != dataset:
                continue
            mf = self.run_dir(rec.run_id) / "manifest.parquet"
            if mf.exists():
                seen.update(pd.read_parquet(mf, columns=["sample_id"])["sample_id"].tolist())
        return seen


def new_run_id(flow_run_id: str | None = None, now: datetime | None = None) -> str:
    """Sortable, unique run id: ``YYYYMMDDTHHMMSSZ-<8 hex>`` (hex from the flow run id)."""
    now = now or datetime.now(UTC)
    tail = (flow_run_id or os.urandom(4).hex()).replace("-", "")[:8]
    return f"{now:%Y%m%dT%H%M%SZ}-{tail}"


# ------------------------------------------------------------------------------- registry
def current_version(models_dir: Path) -> str | None:
    """The version named in ``models/CURRENT`` (None when no model is registered)."""
    p = Path(models_dir) / "CURRENT"
    if not p.exists():
        return None
    v = p.read_text().strip()
    if not (Path(models_dir) / v / "encoder.pt").exists():
        raise FileNotFoundError(
            f"{str(p)!r} names version {v!r} but {str(Path(models_dir) / v / 'encoder.pt')!r} is "
            "missing; re-run train-encoder or fix CURRENT"
        )
    return v


#: roles of the rows of a version (``<models>/<version>/rows.parquet``)
ROW_ROLES = ("train", "reference")
ROWS_COLUMNS = ("sample_id", "role", "label", "source_ref", "source")


def register_encoder(
    encoder: Any,
    models_dir: Path,
    record: dict[str, Any],
    rows: Any = None,
    *,
    make_current: bool = True,
) -> str:
    """Save ``encoder`` as the next version (folder written aside, then renamed) and, when
    ``make_current``, make it current. ``rows``: the version's rows (a DataFrame with
    :data:`ROWS_COLUMNS`), written as ``rows.parquet`` inside the folder before the rename, so a
    registered version always has them. Returns the version, e.g. ``triplet-v0003``."""
    if rows is not None:
        check_version_rows(rows, "rows")
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    nums = [int(m.group(1)) for p in models_dir.iterdir() if (m := _VERSION.match(p.name))]
    while True:
        version = f"triplet-v{max(nums, default=0) + 1:04d}"
        tmp = models_dir / f".{version}.{os.getpid()}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        encoder.save(tmp / "encoder.pt")
        side = json.loads((tmp / "encoder.pt.json").read_text())
        rec = {
            **record,
            "version": version,
            "encoder_hash": side["file_sha256"],
            "registered_at": datetime.now(UTC).isoformat(),
        }
        (tmp / "model.json").write_text(json.dumps(rec, indent=2, sort_keys=True, default=str))
        if rows is not None:
            rows.to_parquet(tmp / "rows.parquet", index=False)
        kill_point("register-tmp")  # fault injection: the folder is complete, not yet renamed
        try:
            os.rename(tmp, models_dir / version)
            break
        except OSError as exc:  # another trainer took the number: take the next one
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            nums.append(max(nums, default=0) + 1)
    kill_point("register-renamed")  # fault injection: a registered version, not yet current
    if make_current:
        set_current(models_dir, version)
    return version


def set_current(models_dir: Path, version: str) -> None:
    """Make ``version`` (a registered folder with ``encoder.pt``) the current encoder."""
    if not (Path(models_dir) / version / "encoder.pt").exists():
        raise FileNotFoundError(f"no encoder.pt for version {version!r} in {str(models_dir)!r}")
    atomic_write_text(Path(models_dir) / "CURRENT", version + "\n")
    kill_point("set-current")  # fault injection: CURRENT written, the lineage not yet


LINEAGE_FILE = "lineage.jsonl"


def read_lineage(models_dir: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """The records of ``models/lineage.jsonl`` (one line per finished retrain), oldest first;
    with ``run_id``, only those of the retrains that run requested. A line that is not a JSON
    object (a torn last line the next run's recovery has not cut yet) is skipped."""
    p = Path(models_dir) / LINEAGE_FILE
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and (run_id is None or rec.get("run_id") == run_id):
            out.append(rec)
    return out


def append_lineage(models_dir: Path, rec: dict[str, Any]) -> None:
    """Append ``rec`` as one line of ``models/lineage.jsonl`` (and, when the version folder
    exists, write it as ``<to_version>/lineage.json``)."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / LINEAGE_FILE, "a") as fh:
        fh.write(json.dumps(rec, sort_keys=True, default=str) + "\n")
    if rec.get("to_version") and (models_dir / rec["to_version"]).is_dir():
        atomic_write_text(
            models_dir / rec["to_version"] / "lineage.json",
            json.dumps(rec, indent=2, sort_keys=True, default=str),
        )


def lineage_outcome(rec: dict[str, Any]) -> str:
    """promoted / refused / failed / skipped of a lineage record (records of older sqflow versions have
    no ``outcome``: failed when their ``status`` says so, else promoted)."""
    return rec.get("outcome") or ("failed" if rec.get("status") == "failed" else "promoted")


def registered_versions(models_dir: Path) -> list[str]:
    """Names of the version folders (``triplet-vNNNN``) in ``models_dir``, oldest first; the
    folders a trainer writes aside (``.triplet-vNNNN.<pid>.tmp``) are not versions."""
    d = Path(models_dir)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and _VERSION.match(p.name))


def model_record(models_dir: Path, version: str) -> dict[str, Any]:
    return json.loads((Path(models_dir) / version / "model.json").read_text())


def check_version_rows(rows: Any, where: str) -> None:
    """ValueError naming ``where`` unless ``rows`` has :data:`ROWS_COLUMNS`, known roles, unique
    sample ids per role and no sample id in two roles (train and reference are disjoint)."""
    missing = [c for c in ROWS_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"{where}: columns {missing} missing; need {list(ROWS_COLUMNS)}")
    bad = sorted(set(rows["role"]) - set(ROW_ROLES))
    if bad:
        raise ValueError(f"{where}: role values {bad}; valid: {list(ROW_ROLES)}")
    if rows.duplicated(["sample_id", "role"]).any():
        raise ValueError(f"{where}: a sample_id appears twice in one role")
    if rows["sample_id"].duplicated().any():
        raise ValueError(
            f"{where}: a sample_id has two roles; a version's reference rows must be disjoint "
            "from its training (and validation) rows"
        )


def version_rows(models_dir: Path, version: str) -> Any:
    """``<models>/<version>/rows.parquet``: the sample ids a version was trained (role
    ``train``: every row given to the encoder, its own validation split included) and
    referenced (role ``reference``) on, with label (-1 = none), source_ref and the source spec
    (JSON). FileNotFoundError for a version registered before rows were recorded."""
    import pandas as pd

    p = Path(models_dir) / version / "rows.parquet"
    if not p.exists():
        raise FileNotFoundError(
            f"{str(p)!r} is missing: version {version!r} was registered before sqflow recorded "
            "the rows of a version; its held-out set cannot be proven, retrain it"
        )
    return pd.read_parquet(p)


# ------------------------------------------------------------------------------- lock
class RunLockedError(RuntimeError):
    """Another nightly run holds the lock of this output folder."""


@contextmanager
def output_lock(
    layout: OutputLayout, run_id: str, timeout_s: float = 0.0, poll_s: float = 0.5
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<output>/.nightly.lock`` for the ``with`` block.

    Waits up to ``timeout_s`` seconds (0: fail at once) and then raises
    :class:`RunLockedError` naming the holder. The kernel releases the lock when the holding
    process dies, so a killed run never leaves a stale lock.
    """
    layout.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(0.0, timeout_s)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    try:
                        holder = Path(layout.lock_path).read_text().strip() or "unknown"
                    except OSError:
                        holder = "unknown"
                    raise RunLockedError(
                        f"another nightly run holds the lock on {str(layout.root)!r} "
                        f"({holder}); waited {timeout_s:g} s. Two runs on the same output "
                        "never overlap: retry later or raise lock_timeout_s"
                    ) from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {
                    "run_id": run_id,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": datetime.now(UTC).isoformat(),
                }
            ).encode(),
            0,
        )
        yield
    finally:
        os.close(fd)  # closing releases the flock
