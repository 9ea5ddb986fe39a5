"""The all-or-nothing BI hand-off on real sinks (files, a DuckDB file, a real PostgreSQL server):
a failed sink rolls the others back, a publish that died half-way is finished or rolled back
by the journal, uncommitted Parquet files and stray temporary files are cleaned, identifiers
that become paths are checked; and the process guard ends a killed process's children."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sqflow.bi import SinkError, journal, publish_run, write_parquet
from sqflow.bi.duck import run_rows as duck_rows
from sqflow.bi.parquet import committed_run_ids, parquet_path
from sqflow.identifiers import UnsafeIdentifier, check_identifier
from tests._bi_frames import run_frames

RUN_A = ("20261124T020000Z-aaaaaaaa", "2026-11-24T02:00:00Z")
RUN_B = ("20261125T020000Z-bbbbbbbb", "2026-11-25T02:00:00Z")


def _frames(run):
    return run_frames(run[0], started=run[1], n=50)


def _parquet_rows(root: Path, run_id: str) -> dict[str, int]:
    return {
        t.name: sum(len(pd.read_parquet(f)) for f in t.glob(f"run_date=*/{run_id}.parquet"))
        for t in root.iterdir()
        if t.is_dir() and not t.name.startswith("_")
    }


def test_unreachable_postgres_leaves_the_run_nowhere(tmp_path, pg_url):
    """The issue's case: PostgreSQL down after Parquet and DuckDB were written. The run must not
    show as completed in Parquet and DuckDB while run.json says failed: both are rolled back;
    an earlier run stays whole everywhere."""
    pq_dir, db = tmp_path / "published", tmp_path / "sqflow.duckdb"
    publish_run(_frames(RUN_A), parquet_dir=pq_dir, duckdb_path=db, postgres_url=pg_url)
    dead = "postgresql://sqflow@127.0.0.1:1/nowhere"
    with pytest.raises(SinkError, match="cannot connect"):
        publish_run(_frames(RUN_B), parquet_dir=pq_dir, duckdb_path=db, postgres_url=dead)
    assert sum(_parquet_rows(pq_dir, RUN_B[0]).values()) == 0
    assert sum(duck_rows(db, RUN_B[0]).values()) == 0
    assert committed_run_ids(pq_dir) == {RUN_A[0]}
    assert duck_rows(db, RUN_A[0])["assignments"] == 50
    assert not list((pq_dir / journal.JOURNAL_FOLDER).glob("*.json"))  # journal finished
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_held_commit_is_kept_or_rolled_back_by_the_record(tmp_path, pg_url):
    """hold_commit: the journal stays until the caller's record decides; ``finish`` keeps a
    completed run and removes a failed one from every sink (PostgreSQL included)."""
    pq_dir, db = tmp_path / "published", tmp_path / "sqflow.duckdb"
    jdir = pq_dir / journal.JOURNAL_FOLDER
    for run in (RUN_A, RUN_B):
        publish_run(
            _frames(run), parquet_dir=pq_dir, duckdb_path=db, postgres_url=pg_url, hold_commit=True
        )
        entry = json.loads((jdir / f"{run[0]}.json").read_text())
        assert entry["state"] == "written"
        assert entry["sinks_started"] == ["parquet", "duckdb", "postgres"]
        assert "sqflow@" in entry["postgres"] and entry["postgres"].count(":") >= 2
    assert journal.finish(jdir, RUN_A[0], committed=True)["action"] == "committed"
    out = journal.finish(jdir, RUN_B[0], committed=False, postgres_url=pg_url)
    assert out["action"] == "rolled back"
    # every row of the run, from every table
    assert out["removed"]["postgres"] == sum(len(df) for df in _frames(RUN_B).values())
    assert committed_run_ids(pq_dir) == {RUN_A[0]}
    assert sum(_parquet_rows(pq_dir, RUN_B[0]).values()) == 0
    assert sum(duck_rows(db, RUN_B[0]).values()) == 0
    from sqflow.bi.postgres import run_rows as pg_rows

    assert sum(pg_rows(pg_url, RUN_B[0]).values()) == 0
    assert pg_rows(pg_url, RUN_A[0])["assignments"] == 50
    assert not list(jdir.glob("*.json"))


def test_recover_finishes_or_rolls_back_a_publish_that_died(tmp_path):
    """A publish killed between its Parquet data files and its ``runs`` marker, and another
    killed after DuckDB: recovery keeps the run the record calls completed and removes the
    other from every sink; without the PostgreSQL URL a run that reached PostgreSQL is kept in
    the journal for the next run (and said so)."""
    pq_dir, db = tmp_path / "published", tmp_path / "sqflow.duckdb"
    jdir = pq_dir / journal.JOURNAL_FOLDER
    for run in (RUN_A, RUN_B):
        publish_run(_frames(run), parquet_dir=pq_dir, duckdb_path=db, hold_commit=True)
    # RUN_B's publish "died" before its runs file: remove the marker as if never written
    parquet_path(pq_dir, "runs", "2026-11-25", RUN_B[0]).unlink()
    actions = journal.recover(jdir, is_committed=lambda rid: rid == RUN_A[0])
    assert {a["run_id"]: a["action"] for a in actions} == {
        RUN_A[0]: "committed",
        RUN_B[0]: "rolled back",
    }
    assert sum(_parquet_rows(pq_dir, RUN_B[0]).values()) == 0
    assert sum(duck_rows(db, RUN_B[0]).values()) == 0
    assert duck_rows(db, RUN_A[0])["assignments"] == 50
    # a journal that reached PostgreSQL cannot be rolled back without the URL: kept, reported
    journal.begin(
        jdir,
        RUN_B[0],
        run_date="2026-11-25",
        parquet_dir=pq_dir,
        duckdb_path=db,
        postgres_url="postgresql://u:secret@db.example/x",
    )
    journal.note_sink(jdir, RUN_B[0], "postgres")
    (res,) = journal.recover(jdir, is_committed=lambda rid: False)
    assert res["action"] == "rollback incomplete" and "no URL configured" in res["error"]
    assert "secret" not in (jdir / f"{RUN_B[0]}.json").read_text()
    assert (jdir / f"{RUN_B[0]}.json").exists()


def test_recover_output_cleans_a_killed_run(tmp_path):
    """The engine's recovery on an output folder: a run.json still "running" becomes
    "crashed" (a folder without run.json, e.g. of the stand-alone stage flows, is left alone),
    Parquet rows of a run without its ``runs``
    file and stray temporary files of dead processes are removed; a live process's temporary
    file and committed runs are left alone."""
    from data_contracts.run_record import RunRecord
    from data_contracts.settings import PipelineSettings
    from sqflow.layout import OutputLayout
    from sqflow.pipeline.recovery import recover_output

    settings = PipelineSettings(output_dir=tmp_path)
    lay = OutputLayout.of(settings)
    running = RunRecord(
        run_id=RUN_A[0], flow_run_id="f-1", started_at=RUN_A[1], sample={"seconds": 1.0}
    )
    lay.run_dir(RUN_A[0]).mkdir(parents=True)
    (lay.run_dir(RUN_A[0]) / "run.json").write_text(running.to_json())
    lay.run_dir(RUN_B[0]).mkdir(parents=True)  # a stand-alone sample flow's folder
    write_parquet(_frames(RUN_B), lay.published)
    parquet_path(lay.published, "runs", "2026-11-25", RUN_B[0]).unlink()  # never committed
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stray = lay.published / "assignments" / f".x.parquet.{dead}.tmp"
    stray.write_bytes(b"half")
    stray_db = tmp_path / f".sqflow.duckdb.{dead}.tmp.wal"
    stray_db.write_bytes(b"half")
    live = tmp_path / f".sqflow.duckdb.{os.getpid()}.tmp"
    live.write_bytes(b"in use")
    current = "20261126T020000Z-cccccccc"
    lay.run_dir(current).mkdir(parents=True)
    out = recover_output(settings, current)
    a = RunRecord.load(lay.run_dir(RUN_A[0]) / "run.json")
    assert a.status == "crashed" and "stages it recorded: sample" in a.error
    assert not (lay.run_dir(RUN_B[0]) / "run.json").exists()
    assert out["crashed"] == [{"run_id": RUN_A[0], "flow_run_id": "f-1"}]
    assert not (lay.run_dir(current) / "run.json").exists()  # the current run is left alone
    assert sum(_parquet_rows(lay.published, RUN_B[0]).values()) == 0
    assert len(out["orphan_files"]) == len(_frames(RUN_B)) - 1
    assert not stray.exists() and not stray_db.exists() and live.exists()
    assert sorted(out["temp_files"]) == sorted([str(stray), str(stray_db)])
    assert recover_output(settings, current) == {
        "publishes": [],
        "crashed": [],
        "orphan_files": [],
        "temp_files": [],
        "registry": [],
    }  # idempotent


def test_identifiers_that_become_paths_are_checked(tmp_path):
    """The issue's case ``publish_run(run_id="../../x")`` and friends: refused before any file
    is written, naming the field and the valid form."""
    frames = _frames(RUN_A)
    for bad in ("../../x", "..", "a/b", ".hidden", "x\0y", "a" * 200):
        frames["runs"]["run_id"] = bad
        for t in frames:
            frames[t]["run_id"] = bad
        with pytest.raises(UnsafeIdentifier, match="run_id .* is not a safe identifier"):
            publish_run(frames, parquet_dir=tmp_path / "p", duckdb_path=tmp_path / "d.duckdb")
    assert not any(tmp_path.iterdir())
    with pytest.raises(UnsafeIdentifier, match="table '../runs'"):
        parquet_path(tmp_path, "../runs", "2026-01-01", RUN_A[0])
    with pytest.raises(ValueError, match="run_date '../x' is not a date"):
        parquet_path(tmp_path, "runs", "../x", RUN_A[0])
    with pytest.raises(UnsafeIdentifier):
        journal.journal_path(tmp_path, "../x")
    from sqflow.layout import OutputLayout
    from sqflow.pipeline.staged import staged_table_path

    with pytest.raises(UnsafeIdentifier, match="run_id"):
        staged_table_path(OutputLayout.at(tmp_path), "../../etc", "drift_reports")
    with pytest.raises(UnsafeIdentifier, match="run_id '../x'"):  # every stage writes under it
        OutputLayout.at(tmp_path).run_dir("../x")
    import numpy as np

    from data_contracts.settings import PipelineSettings
    from sqflow.pipeline.sample import sample_stage

    np.save(tmp_path / "x.npy", np.zeros((4, 2, 2), dtype=np.float32))
    src = {"kind": "npy", "path": str(tmp_path / "x.npy")}
    with pytest.raises(UnsafeIdentifier, match="run_id"):
        sample_stage(PipelineSettings(output_dir=tmp_path / "o", source=src), "../../x")
    assert not (tmp_path / "o").exists() and not (tmp_path.parent / "x").exists()
    assert check_identifier("20261124T020000Z-aaaaaaaa", "run_id") == "20261124T020000Z-aaaaaaaa"
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_parquet_runs_file_is_written_last(tmp_path, monkeypatch):
    """The commit marker: while the data files are written the run has no ``runs`` file."""
    import sqflow.bi.parquet as parquet

    seen = []
    real = parquet.write_table_file

    def spy(root, table, *a, **k):
        seen.append((table, RUN_A[0] in committed_run_ids(root)))
        return real(root, table, *a, **k)

    monkeypatch.setattr(parquet, "write_table_file", spy)
    write_parquet(_frames(RUN_A), tmp_path)
    assert seen[-1] == ("runs", False)
    assert all(not committed for _, committed in seen)
    assert RUN_A[0] in committed_run_ids(tmp_path)


def test_process_guard_ends_the_children_of_a_killed_process(tmp_path):
    """A process that starts the guard and a long-lived child, then dies by SIGKILL: the child
    (a stand-in for the ephemeral Prefect server) is ended by the guard within seconds."""
    # the child exists before the guard starts (as the ephemeral Prefect server does) and the
    # process dies at once, long before the guard's first poll: the hand-over must cover it
    code = (
        "import subprocess, sys, time, os\n"
        "from sqflow.process_guard import start_process_guard\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "print(child.pid, flush=True)\n"
        "start_process_guard(poll_s=30)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert p.returncode == -signal.SIGKILL, p.stderr
    child = int(p.stdout.split()[0])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break  # gone
        if state == "Z":
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child of the killed process is still running (orphan)")
