"""What the next nightly does about a run that was killed (``kill -9``, power loss, OOM killer)
before it could clean up; called at the start of a run, under the output lock (so no other run
of this output folder is alive).

1. A publish that died half-way (a journal left in ``published/_sqflow_journal``) is finished
   when the run's record says completed, else rolled back from every sink
   (:func:`sqflow.bi.journal.recover`).
2. A run folder whose ``run.json`` still says ``running`` (written at the start of every
   nightly, before any stage) is recorded as ``crashed`` with what is known (the stages it
   recorded, when it was found); its Prefect flow run is the flow layer's business
   (:mod:`flows.nightly` marks it Crashed from the ``flow_run_id`` returned here).
3. Parquet files of a run that has no ``runs`` file (the commit marker) are removed: rows no
   committed run owns (e.g. written by older versions that let stages write into
   ``published/``).
4. Temporary files of the atomic-write protocol (``.<name>.<pid>.tmp``, and DuckDB's
   ``.<name>.<pid>.tmp.wal``) whose process is gone are removed everywhere under the output
   and under the model registry (``models_dir``, which may lie outside the output): among them
   the version folders a trainer writes aside (``.triplet-vNNNN.<pid>.tmp``).
5. The model registry after a retrain that died (:func:`recover_registry`): a torn last line
   of ``models/lineage.jsonl`` is cut off; a version that a retrain of one of this output's
   runs registered but never recorded in the lineage (killed after registering it) is handled
   as the retrain's own failure path would have: ``CURRENT`` back to the version it was
   retrained from, the version marked ``FAILED.json``, the run's embedding store put back if
   the retrain had swapped it, and a ``failed`` lineage line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from data_contracts.run_record import STAGE_TIMING_NAMES, RunRecord, RunRecordError
from data_contracts.settings import PipelineSettings

from ..atomic_files import atomic_write_text
from ..bi import journal
from ..bi.parquet import MARKER_TABLE, committed_run_ids
from ..layout import (
    OutputLayout,
    append_lineage,
    model_record,
    read_lineage,
    registered_versions,
)
from .publish import journal_dir

log = logging.getLogger(__name__)

__all__ = ["recover_output", "recover_registry", "stray_temp_files"]

#: names the atomic-write protocol gives its temporary files (sqflow.atomic_files)
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp(\.wal)?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def stray_temp_files(root: str | os.PathLike[str]) -> list[Path]:
    """Temporary files of the atomic-write protocol under ``root`` whose writing process no
    longer exists (files and folders, e.g. a registry's ``.triplet-v0002.<pid>.tmp``)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in list(dirnames) + filenames:
            m = _TEMP.match(name)
            if m and not _alive(int(m.group(1))):
                out.append(Path(dirpath) / name)
        # a store's chunk folders hold no temporary files of ours: do not walk them
        dirnames[:] = [d for d in dirnames if not d.endswith(".zarr") and not _TEMP.match(d)]
    return sorted(out)


def _cut_torn_line(path: Path) -> str | None:
    """Cut a last line without its newline off ``path`` (a record whose append a killed
    process did not finish; left there, the next append would be glued to it and lost too).
    Returns the fragment cut (None when the file ends cleanly or does not exist)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if not data or data.endswith(b"\n"):
        return None
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as fh:
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return data[keep:].decode(errors="replace")


def _store_version(store: Path) -> str | None:
    """``encoder_version`` in a Zarr store's root metadata (None when unreadable)."""
    try:
        return json.loads((store / "zarr.json").read_text())["attributes"]["encoder_version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recover_registry(lay: OutputLayout) -> list[dict[str, Any]]:
    """Repair the model registry after a retrain of this output folder was killed (module
    docstring, item 5); call it holding the output lock, so that no retrain of this output is
    alive. Versions registered for runs of another output folder sharing the registry are
    left alone (their own output's recovery handles them).

    Returns one action per repair (empty: nothing to do): ``{"action": "cut torn lineage
    line", "fragment": ...}`` and ``{"action": "recorded as failed", "version", "run_id",
    "current"}`` (``current``: the current version afterwards)."""
    models = lay.models_dir
    out: list[dict[str, Any]] = []
    if not models.is_dir():
        return out
    lineage = models / "lineage.jsonl"
    fragment = _cut_torn_line(lineage)
    if fragment is not None:
        out.append({"action": "cut torn lineage line", "fragment": fragment})
        log.warning("%s: cut off a torn last line (%r)", lineage, fragment[:80])
    recorded = {r.get("to_version") for r in read_lineage(models)}
    now = datetime.now(UTC).isoformat()
    for version in registered_versions(models):
        if version in recorded:
            continue
        try:
            rec = model_record(models, version)
        except (OSError, ValueError):
            continue
        run_id, old = rec.get("retrain_run_id"), rec.get("retrained_from")
        if not run_id or not (lay.root / "runs" / str(run_id)).is_dir():
            continue  # not a retrain, or a retrain of another output folder
        error = (
            "the retrain's process died before it recorded its outcome (killed or crashed); "
            f"found by the next run at {now}"
        )
        current_file = models / "CURRENT"
        if current_file.exists() and current_file.read_text().strip() == version and old:
            atomic_write_text(current_file, old + "\n")
        if not (models / version / "FAILED.json").exists():
            atomic_write_text(
                models / version / "FAILED.json",
                json.dumps(
                    {"version": version, "error": error, "run_id": run_id, "at": now}, indent=2
                ),
            )
        rd = lay.root / "runs" / str(run_id)
        live, kept = rd / "embeddings.zarr", rd / f"embeddings-{old or 'previous'}.zarr"
        if kept.is_dir() and (not live.exists() or _store_version(live) == version):
            if live.exists():
                shutil.rmtree(live)
            kept.rename(live)  # the store the run had before the retrain swapped it
        shutil.rmtree(rd / f".embeddings-{version}.zarr", ignore_errors=True)  # its staging
        current = current_file.read_text().strip() if current_file.exists() else None
        append_lineage(
            models,
            {
                "run_id": run_id,
                "from_version": old,
                "to_version": version,
                "reason": "unknown: the retrain's process died",
                "status": "failed",
                "outcome": "failed",
                "error": error,
                "current_after": current,
                "finished_at": now,
            },
        )
        out.append(
            {
                "action": "recorded as failed",
                "version": version,
                "run_id": run_id,
                "current": current,
            }
        )
        log.warning(
            "version %s (retrain after run %s) was left by a killed retrain: marked FAILED; "
            "current: %s",
            version,
            run_id,
            current,
        )
    return out


def _crash_record(lay: OutputLayout, run_dir: Path) -> RunRecord | None:
    """The run's record turned ``crashed`` (None when it is not a crashed run)."""
    p = run_dir / "run.json"
    now = datetime.now(UTC).isoformat()
    if p.exists():
        try:
            rec = RunRecord.load(p)
        except (OSError, RunRecordError) as exc:
            log.warning("run folder %s: unreadable run.json (%s): left as it is", run_dir, exc)
            return None
        if rec.status != "running":
            return None
        done = [s for s in STAGE_TIMING_NAMES if getattr(rec, s)]
        rec.error = (
            "the run's process died before the run finished (killed or crashed); stages it "
            f"recorded: {', '.join(done) or 'none'}; found by the next run at {now}"
        )
    else:
        # no record: not a nightly (those write run.json before any stage), e.g. a folder of
        # the stand-alone sample/embed flows, which may still be continued: left alone
        return None
    rec.status = "crashed"
    rec.finished_at = rec.finished_at or now
    rec.outputs = {"run folder": str(run_dir), **rec.outputs}
    return rec


def recover_output(
    settings: PipelineSettings, current_run_id: str, *, postgres_url: str | None = None
) -> dict[str, Any]:
    """Clean up after killed runs of this output folder (see the module docstring); call it
    holding the output lock. ``current_run_id``: the run doing the recovery (left alone).
    ``postgres_url``: needed to roll back a publish that reached PostgreSQL.

    Returns ``publishes`` (one action per journal entry), ``crashed`` (``run_id`` and
    ``flow_run_id`` of each run recorded as crashed now), ``orphan_files`` (Parquet files of
    uncommitted runs removed), ``temp_files`` (stray temporary files removed, registry
    included) and ``registry`` (:func:`recover_registry`)."""
    lay = OutputLayout.of(settings)
    out: dict[str, Any] = {"publishes": [], "crashed": [], "orphan_files": [], "temp_files": []}
    if not lay.root.exists():
        return out
    out["registry"] = recover_registry(lay)

    def committed(run_id: str) -> bool:
        try:
            return RunRecord.load(lay.run_dir(run_id) / "run.json").completed
        except (OSError, RunRecordError):
            return False

    out["publishes"] = journal.recover(
        journal_dir(lay), is_committed=committed, postgres_url=postgres_url
    )
    runs_dir = lay.root / "runs"
    for rd in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        if not rd.is_dir() or rd.name == current_run_id:
            continue
        rec = _crash_record(lay, rd)
        if rec is not None:
            atomic_write_text(rd / "run.json", rec.to_json())
            out["crashed"].append({"run_id": rec.run_id, "flow_run_id": rec.flow_run_id})
            log.warning("run %s was killed before it finished: recorded as crashed", rec.run_id)
    if lay.published.is_dir():
        in_progress = {e["run_id"] for e in journal.read_journals(journal_dir(lay))}
        keep = committed_run_ids(lay.published) | in_progress
        for table_dir in lay.published.iterdir():
            if not table_dir.is_dir() or table_dir.name.startswith("_"):
                continue
            if table_dir.name == MARKER_TABLE:
                continue
            for f in table_dir.glob("run_date=*/*.parquet"):
                if f.stem not in keep:
                    f.unlink()
                    out["orphan_files"].append(str(f))
        if out["orphan_files"]:
            log.warning(
                "removed %d Parquet files of runs that were never committed: %s",
                len(out["orphan_files"]),
                out["orphan_files"][:5],
            )
    strays = stray_temp_files(lay.root)
    if not lay.models_dir.is_relative_to(lay.root) and lay.models_dir.is_dir():
        strays += stray_temp_files(lay.models_dir)  # a registry outside the output folder
    for p in strays:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        out["temp_files"].append(str(p))
    if out["temp_files"]:
        log.warning("removed stray temporary files of killed runs: %s", out["temp_files"][:5])
    return out
