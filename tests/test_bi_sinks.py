"""BI sinks on real files and real databases (no mocks): Parquet (atomic, idempotent per run),
DuckDB queried the way a BI tool does, and a real PostgreSQL server started by the suite
(created if missing, upsert per run_id, a failure mid-run leaves the previous state, re-runs do
not duplicate, the password never shows)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from data_contracts.tables import TABLES, ContractViolation
from sqflow.bi import (
    ContractVersionMismatch,
    SinkError,
    publish_run,
    write_duckdb,
    write_parquet,
    write_postgres,
)
from tests._bi_frames import run_frames

RUN_A = ("20261124T020000Z-aaaaaaaa", "2026-11-24T02:00:00Z")
RUN_B = ("20261125T020000Z-bbbbbbbb", "2026-11-25T02:00:00Z")
RUN_C = ("20261126T020000Z-cccccccc", "2026-11-26T02:00:00Z")


def _frames(run, **kw):
    return run_frames(run[0], started=run[1], **kw)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------------------- Parquet
def test_parquet_partitioned_typed_and_idempotent(tmp_path):
    root = tmp_path / "published"
    fa, fb = _frames(RUN_A, seed=1), _frames(RUN_B, seed=2)
    write_parquet(fa, root)
    paths = write_parquet(fb, root)
    assert paths["assignments"] == (
        root / "assignments" / "run_date=2026-11-25" / f"{RUN_B[0]}.parquet"
    )
    for name, c in TABLES.items():
        if name not in paths:  # retrains: published after the run (test_bi_retrains)
            continue
        f = pq.ParquetFile(paths[name])
        kv = json.loads(f.schema_arrow.metadata[b"sqflow.contract"])
        assert kv["contract_version"] == c.version and kv["table"] == name
        assert f.schema_arrow.remove_metadata().equals(c.arrow_schema().remove_metadata())
    # re-publishing run A (twice, with changed numbers) replaces, never duplicates
    fa2 = _frames(RUN_A, seed=3, n=150)
    write_parquet(fa2, root)
    write_parquet(fa2, root)
    ds = pads.dataset(root / "assignments", format="parquet", partitioning="hive")
    got = ds.to_table().to_pandas()
    assert got.groupby("run_id").size().to_dict() == {RUN_A[0]: 150, RUN_B[0]: 200}
    a = got[got.run_id == RUN_A[0]].sort_values("sample_id").reset_index(drop=True)
    np.testing.assert_allclose(a["distance"], fa2["assignments"]["distance"].astype("float64"))
    assert sorted(
        p.name for p in root.rglob("*") if p.is_file() and "assignments" in str(p)
    ) == sorted([f"{RUN_A[0]}.parquet", f"{RUN_B[0]}.parquet"])
    assert not list(root.rglob("*.tmp"))


def test_parquet_republish_moves_a_run_between_date_partitions(tmp_path):
    root = tmp_path / "published"
    write_parquet(_frames(RUN_A), root)
    moved = _frames((RUN_A[0], "2026-11-23T23:59:00Z"))
    write_parquet(moved, root)
    assert [p.parent.name for p in (root / "runs").rglob("*.parquet")] == ["run_date=2026-11-23"]


def test_a_violating_run_writes_nothing_anywhere(tmp_path, pg_url):
    root, db = tmp_path / "published", tmp_path / "bi.duckdb"
    publish_run(_frames(RUN_A), parquet_dir=root, duckdb_path=db, postgres_url=pg_url)
    before_files = _files(root)
    con = duckdb.connect(str(db), read_only=True)
    before_db = con.execute("SELECT count(*), sum(distance) FROM assignments").fetchall()
    con.close()
    bad = _frames(RUN_A, seed=9)
    bad["quarantine"].loc[1, "reason"] = ""  # the LAST table is the bad one
    with pytest.raises(ContractViolation) as ei:
        publish_run(bad, parquet_dir=root, duckdb_path=db, postgres_url=pg_url)
    assert "table 'quarantine'" in str(ei.value) and "'reason'" in str(ei.value)
    assert "[1]" in str(ei.value)
    assert _files(root) == before_files
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), sum(distance) FROM assignments").fetchall() == before_db
    con.close()
    import psycopg

    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT count(*) FROM assignments").fetchone()[0] == 200


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import pandas as pd
    from sqflow.bi import prepare_run, write_parquet
    from tests._bi_frames import run_frames
    root, n = sys.argv[1], int(sys.argv[2])
    runs = [prepare_run(run_frames("20261126T020000Z-kkkkkkkk", n=n, seed=s)) for s in (1, 2)]
    print("ready", flush=True)
    i = 0
    while True:
        write_parquet(runs[i % 2], root)
        i += 1
""")


def test_parquet_write_killed_midway_leaves_a_whole_file(tmp_path):
    """SIGKILL a process that keeps re-publishing a large run: afterwards the run's file is
    always one whole version (old or new), never a torn one, and no temp file is visible to a
    ``*.parquet`` reader."""
    root = tmp_path / "published"
    n = 200_000
    expected = {}
    for s in (1, 2):
        d = run_frames("20261126T020000Z-kkkkkkkk", n=n, seed=s)["assignments"]
        expected[s] = float(d["distance"].astype("float64").sum())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for delay in (0.2, 1.1):
        p = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), str(n)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert p.stdout.readline().strip() == "ready"
            time.sleep(delay)
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
        f = root / "assignments" / "run_date=2026-11-26" / "20261126T020000Z-kkkkkkkk.parquet"
        for g in root.rglob("*.parquet"):  # every visible file of every table is whole
            pq.read_table(g)
        if not f.exists():  # killed before the first assignments rename
            assert not list((root / "assignments").rglob("*.parquet"))
            continue
        t = pq.read_table(f)
        assert t.num_rows == n
        total = float(np.asarray(t.column("distance")).sum())
        assert min(abs(total - v) for v in expected.values()) < 1e-6 * n
        ds = pads.dataset(root / "assignments", format="parquet", partitioning="hive")
        assert ds.count_rows() == n  # temp leftovers are not *.parquet files


# ------------------------------------------------------------------------------- DuckDB
def _three_runs():
    return [
        _frames(RUN_A, seed=1, drift=0.1),
        _frames(RUN_B, seed=2, drift=0.4, n=120),
        _frames(RUN_C, seed=3, drift=0.9, n=90, k=3),
    ]


def _expected_sizes(runs):
    out = set()
    for f in runs:
        for j, n in f["assignments"].groupby("cluster_id").size().items():
            out.add((f["runs"]["run_id"].iloc[0], int(j), int(n)))
    return out


def _expected_drift(runs):
    return [
        (f["runs"]["started_at"].iloc[0].to_pydatetime(), s, float(v))
        for f in runs
        for s, v in zip(f["drift_reports"]["statistic"], f["drift_reports"]["value"])
    ]


SIZES_SQL = """SELECT a.run_id, a.cluster_id, count(*) AS n FROM assignments a
               GROUP BY a.run_id, a.cluster_id ORDER BY a.run_id, a.cluster_id"""
DRIFT_SQL = """SELECT r.started_at, d.statistic, d.value FROM drift_reports d
               JOIN runs r USING (run_id) ORDER BY r.started_at, d.statistic"""


def test_duckdb_answers_bi_queries_like_the_input(tmp_path):
    db = tmp_path / "sqflow.duckdb"
    runs = _three_runs()
    for f in runs:
        write_duckdb(f, db)
    write_duckdb(runs[1], db)  # a re-publish does not duplicate
    con = duckdb.connect(str(db), read_only=True)  # how a BI tool should open it
    try:
        got = {(r, int(c), int(n)) for r, c, n in con.execute(SIZES_SQL).fetchall()}
        assert got == _expected_sizes(runs)
        # cluster_centers.size agrees with the assignments
        mism = con.execute("""SELECT c.run_id, c.cluster_id, c.size, count(a.sample_id)
            FROM cluster_centers c LEFT JOIN assignments a USING (run_id, cluster_id)
            GROUP BY ALL HAVING c.size <> count(a.sample_id)""").fetchall()
        assert mism == []
        drift = con.execute(DRIFT_SQL).fetchall()
        exp = sorted(_expected_drift(runs), key=lambda t: (t[0], t[1]))
        assert [(t.astimezone(exp[0][0].tzinfo), s, v) for t, s, v in drift] == exp
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'runs'"
            ).fetchall()
        )
        assert types["started_at"] == "TIMESTAMP WITH TIME ZONE" and types["config"] == "JSON"
        assert types["drift_detected"] == "BOOLEAN" and types["n_clusters"] == "INTEGER"
        assert (
            con.execute(
                "SELECT config->>'n_clusters' FROM runs WHERE run_id = ?", [RUN_C[0]]
            ).fetchone()[0]
            == "3"
        )
        vers = dict(
            con.execute("SELECT table_name, contract_version FROM sqflow_contracts").fetchall()
        )
        assert vers == {n: TABLES[n].version for n in TABLES}
        comment = con.execute(
            "SELECT comment FROM duckdb_tables() WHERE table_name = 'runs'"
        ).fetchone()[0]
        assert "contract runs v1" in comment
        nulls = con.execute("SELECT count(*) FROM assignments WHERE label IS NULL").fetchone()[0]
        assert nulls == sum(int(f["assignments"]["label"].isna().sum()) for f in runs)
    finally:
        con.close()


def test_duckdb_failure_mid_run_keeps_previous_state(tmp_path):
    """A row that passes the contract but breaks a database constraint on the LAST table: the
    run's earlier tables (already deleted and re-inserted in the transaction) roll back."""
    db = tmp_path / "sqflow.duckdb"
    write_duckdb(_frames(RUN_A, seed=1), db)
    con = duckdb.connect(str(db))
    before = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
    # a constraint the contract does not know about (as a DBA might add one)
    con.execute("ALTER TABLE quarantine RENAME TO quarantine_old")
    con.execute(
        "CREATE TABLE quarantine (run_id VARCHAR NOT NULL, sample_ref VARCHAR NOT NULL, "
        "reason VARCHAR NOT NULL CHECK (reason <> 'boom'), "
        "detected_at TIMESTAMPTZ NOT NULL)"
    )
    con.execute("INSERT INTO quarantine SELECT * FROM quarantine_old")
    con.execute("DROP TABLE quarantine_old")
    con.close()
    new = _frames(RUN_A, seed=5, n=77)
    new["quarantine"].loc[1, "reason"] = "boom"
    with pytest.raises(duckdb.ConstraintException):
        write_duckdb(new, db)
    con = duckdb.connect(str(db), read_only=True)
    after = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
    con.close()
    assert after == before


def test_duckdb_refuses_another_contract_version_and_replaces_legacy_views(tmp_path):
    db = tmp_path / "sqflow.duckdb"
    root = tmp_path / "published"
    write_parquet(_frames(RUN_A), root)
    con = duckdb.connect(str(db))  # the older layout: views over the Parquet files
    con.execute(f"CREATE VIEW runs AS SELECT * FROM read_parquet('{root}/runs/*/*.parquet')")
    con.close()
    write_duckdb(_frames(RUN_A), db)
    con = duckdb.connect(str(db))
    assert (
        con.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = 'runs'"
        ).fetchone()[0]
        == "BASE TABLE"
    )
    con.execute(
        "UPDATE sqflow_contracts SET contract_version = '0' WHERE table_name = 'assignments'"
    )
    con.close()
    with pytest.raises(ContractVersionMismatch, match="'assignments' holds contract v0"):
        write_duckdb(_frames(RUN_B), db)


# ------------------------------------------------------------------------------- PostgreSQL
def _retried(exc: BaseException) -> bool:
    """Whether the publish-bi Prefect task would retry after ``exc``."""
    from prefect.states import Failed

    from tasks.publish_bi import transient_publish_error

    return transient_publish_error(None, None, Failed(data=exc))


def test_publish_bi_retries_only_transient_failures_and_resolves_the_url(monkeypatch):
    from tasks.publish_bi import resolve_postgres_url

    assert not _retried(ContractViolation("runs", "column 'x' ..."))
    assert not _retried(ContractVersionMismatch("v0 vs v1"))
    assert _retried(duckdb.IOException("Could not set lock on file"))
    assert _retried(OSError("disk full")) and not _retried(FileNotFoundError("x"))
    monkeypatch.delenv("SQFLOW_POSTGRES_URL", raising=False)
    monkeypatch.delenv("SQFLOW_POSTGRES_SECRET_BLOCK", raising=False)
    assert resolve_postgres_url() is None
    monkeypatch.setenv("SQFLOW_POSTGRES_URL", "postgresql://u:p@h/db")
    assert resolve_postgres_url() == "postgresql://u:p@h/db"
    assert resolve_postgres_url("postgresql://x@h/y") == "postgresql://x@h/y"
    from pydantic import SecretStr

    assert resolve_postgres_url(SecretStr("postgresql://x:pw@h/y")) == "postgresql://x:pw@h/y"


def _pg(url, sql, *args):
    import psycopg

    with psycopg.connect(url) as c:
        return c.execute(sql, args or None).fetchall()


def _pg_state(url):
    return {t: _pg(url, f'SELECT * FROM "{t}" ORDER BY 1, 2, 3') for t in TABLES}


def test_postgres_created_if_missing_typed_and_commented(pg_url):
    write_postgres(_frames(RUN_A), pg_url)
    tables = {
        r[0]
        for r in _pg(
            pg_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    assert tables == set(TABLES) | {"sqflow_contracts"}
    types = dict(
        _pg(
            pg_url,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'cluster_centers'",
        )
    )
    assert types["center"] == "ARRAY" and types["cluster_id"] == "integer"
    assert types["label_purity"] == "double precision"
    types = dict(
        _pg(
            pg_url,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'runs'",
        )
    )
    assert types["config"] == "jsonb" and types["started_at"] == "timestamp with time zone"
    nullable = dict(
        _pg(
            pg_url,
            "SELECT column_name, is_nullable FROM information_schema.columns"
            " WHERE table_name = 'assignments'",
        )
    )
    assert nullable == {
        "run_id": "NO",
        "sample_id": "NO",
        "cluster_id": "NO",
        "distance": "NO",
        "label": "YES",
        "encoder_version": "NO",
    }
    pk = _pg(
        pg_url,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = "
        "i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = "
        "'assignments'::regclass AND i.indisprimary",
    )
    assert {r[0] for r in pk} == {"run_id", "sample_id"}
    assert (
        "contract assignments v1"
        in _pg(pg_url, "SELECT obj_description('assignments'::regclass)")[0][0]
    )
    assert dict(_pg(pg_url, "SELECT table_name, contract_version FROM sqflow_contracts")) == {
        n: TABLES[n].version for n in TABLES
    }
    assert _pg(pg_url, "SELECT config->>'n_clusters' FROM runs")[0][0] == "4"


def test_postgres_upsert_per_run_and_bi_queries(pg_url):
    runs = _three_runs()
    for f in runs:
        write_postgres(f, pg_url)
    changed = _frames(RUN_B, seed=7, drift=0.6, n=60)
    write_postgres(changed, pg_url)
    write_postgres(changed, pg_url)  # a re-run does not duplicate
    runs[1] = changed
    got = {(r, int(c), int(n)) for r, c, n in _pg(pg_url, SIZES_SQL)}
    assert got == _expected_sizes(runs)
    assert _pg(pg_url, "SELECT run_id, count(*) FROM runs GROUP BY 1 ORDER BY 1") == [
        (RUN_A[0], 1),
        (RUN_B[0], 1),
        (RUN_C[0], 1),
    ]
    drift = _pg(pg_url, DRIFT_SQL)
    exp = sorted(_expected_drift(runs), key=lambda t: (t[0], t[1]))
    assert [(t, s, v) for t, s, v in drift] == exp
    assert _pg(pg_url, "SELECT count(*) FROM drift_reports WHERE p_value IS NULL")[0][0] == 3
    center = _pg(
        pg_url, "SELECT center FROM cluster_centers WHERE run_id = %s AND cluster_id = 0", RUN_C[0]
    )[0][0]
    assert center == runs[2]["cluster_centers"]["center"].iloc[0]


def test_postgres_failure_mid_run_keeps_previous_state(pg_url):
    """A server-side failure after the first tables were already replaced in the transaction:
    a CHECK constraint on the last table rejects one (contract-valid) row."""
    write_postgres(_frames(RUN_A, seed=1), pg_url)
    write_postgres(_frames(RUN_B, seed=2), pg_url)
    _pg_exec(pg_url, "ALTER TABLE quarantine ADD CONSTRAINT no_boom CHECK (reason <> 'boom')")
    before = _pg_state(pg_url)
    new = _frames(RUN_A, seed=5, n=77)
    new["quarantine"].loc[1, "reason"] = "boom"
    import psycopg

    with pytest.raises(psycopg.errors.CheckViolation) as ei:
        write_postgres(new, pg_url)
    assert not _retried(ei.value)  # a constraint failure is not retried
    assert _pg_state(pg_url) == before
    # and the fixed run then goes in, replacing run A only
    new["quarantine"].loc[1, "reason"] = "fine"
    write_postgres(new, pg_url)
    assert _pg(pg_url, "SELECT run_id, count(*) FROM assignments GROUP BY 1 ORDER BY 1") == [
        (RUN_A[0], 77),
        (RUN_B[0], 200),
    ]


def _pg_exec(url, sql):
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(sql)


def test_postgres_connection_killed_mid_run_keeps_previous_state(pg_url):
    """Block the publisher on the last table with a lock, kill its backend from outside while
    it holds the earlier tables' new rows, check nothing of that run changed."""
    import psycopg

    write_postgres(_frames(RUN_A, seed=1), pg_url)
    before = _pg_state(pg_url)
    holder = psycopg.connect(pg_url)
    holder.execute("LOCK TABLE quarantine IN ACCESS EXCLUSIVE MODE")  # opens a transaction
    err: list[BaseException] = []

    def publish():
        try:
            write_postgres(_frames(RUN_A, seed=6, n=50), pg_url)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            err.append(exc)

    t = threading.Thread(target=publish)
    t.start()
    try:
        pid = None
        for _ in range(300):
            rows = _pg(
                pg_url,
                "SELECT pid, query FROM pg_stat_activity WHERE wait_event_type = "
                "'Lock' AND query LIKE 'DELETE FROM \"quarantine\"%%'",
            )
            if rows:
                pid = rows[0][0]
                break
            time.sleep(0.05)
        assert pid is not None, "publisher never reached the last table"
        # meanwhile it has already replaced runs/cluster_centers/assignments in its transaction
        assert _pg(pg_url, "SELECT pg_terminate_backend(%s)", pid) == [(True,)]
        t.join(60)
    finally:
        holder.rollback()
        holder.close()
    assert not t.is_alive() and err, "the publish should have failed"
    assert _retried(err[0])  # the Prefect task retries a dropped connection
    assert _pg_state(pg_url) == before
    write_postgres(_frames(RUN_A, seed=6, n=50), pg_url)  # the retry then succeeds
    assert _pg(pg_url, "SELECT count(*) FROM assignments")[0][0] == 50


def test_postgres_contract_version_recorded_and_enforced(pg_url):
    write_postgres(_frames(RUN_A), pg_url)
    _pg_exec(pg_url, "UPDATE sqflow_contracts SET contract_version = '0' WHERE table_name = 'runs'")
    with pytest.raises(ContractVersionMismatch, match="'runs' holds contract v0"):
        write_postgres(_frames(RUN_B), pg_url)
    assert _pg(pg_url, "SELECT count(*) FROM runs")[0][0] == 1


def test_postgres_password_never_shown(postgres_server, caplog, tmp_path):
    secret = "hunter2-not-for-logs"
    good = postgres_server.create_database().replace("sqflow@", f"sqflow:{secret}@")
    caplog.set_level(logging.DEBUG)
    res = publish_run(
        _frames(RUN_A), parquet_dir=tmp_path / "p", duckdb_path=None, postgres_url=good
    )  # trust auth: the password is accepted and ignored
    assert res.postgres and secret not in res.postgres and "***" in res.postgres
    assert secret not in res.to_markdown() and secret not in json.dumps(res.to_dict())
    # a server that does not answer: the error names the (masked) target
    bad = f"postgresql://sqflow:{secret}@127.0.0.1:1/nodb"
    with pytest.raises(SinkError) as ei:
        write_postgres(_frames(RUN_A), bad)
    assert "cannot connect" in str(ei.value) and "***" in str(ei.value)
    assert secret not in str(ei.value) and secret not in repr(ei.value)
    assert secret not in caplog.text


def test_every_table_exists_even_before_its_first_rows(tmp_path, pg_url):
    """A dashboard on drift_reports works before the monitor ever ran: all contract tables are
    created (empty) on the first publish, whatever tables the run had."""
    only_runs = {"runs": _frames(RUN_A)["runs"]}
    db = tmp_path / "bi.duckdb"
    publish_run(only_runs, parquet_dir=tmp_path / "p", duckdb_path=db, postgres_url=pg_url)
    con = duckdb.connect(str(db), read_only=True)
    for name in TABLES:
        n = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
        assert n == (1 if name == "runs" else 0)
        assert _pg(pg_url, f"SELECT count(*) FROM {name}")[0][0] == n
    assert len(con.execute("SELECT * FROM sqflow_contracts").fetchall()) == len(TABLES)
    con.close()
    assert [p.parent.parent.name for p in (tmp_path / "p").rglob("*.parquet")] == ["runs"]


_READER = textwrap.dedent("""
    import sys, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    print(con.execute("SELECT count(*) FROM assignments").fetchone()[0], flush=True)
    sys.stdin.readline()  # hold the file open until told
    print(con.execute("SELECT count(*) FROM assignments").fetchone()[0], flush=True)
""")


def test_duckdb_publish_is_not_blocked_by_a_bi_reader(tmp_path):
    """A BI tool in another process holds the DuckDB file open: the next publish still goes
    through (copy + atomic replace), the open connection keeps a consistent old view, a new
    connection sees the new run. Writing in place (swap=False) is what a reader would block."""
    db = tmp_path / "sqflow.duckdb"
    write_duckdb(_frames(RUN_A), db)
    p = subprocess.Popen(
        [sys.executable, "-c", _READER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "200"
        with pytest.raises(duckdb.IOException, match="lock"):
            write_duckdb(_frames(RUN_B), db, swap=False)
        write_duckdb(_frames(RUN_B, n=50), db)
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "200"  # its snapshot: the old file
    finally:
        p.kill()
        p.wait()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute(
        "SELECT run_id, count(*) FROM assignments GROUP BY 1 ORDER BY 1"
    ).fetchall() == [(RUN_A[0], 200), (RUN_B[0], 50)]
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sqflow.duckdb.lock", "sqflow.duckdb"]


def test_the_monitors_drift_file_joins_the_published_run(tmp_path):
    """When the monitor stage wrote the run's drift_reports Parquet (private, in the run
    folder), the publish step takes it (into the run's date partition) and the runs row carries
    the decision; without it, the runs row keeps drift_detected null."""
    from sqflow.layout import OutputLayout
    from sqflow.pipeline.publish import attach_drift_reports

    lay = OutputLayout.at(tmp_path)
    root = lay.published
    frames = _frames(RUN_A)
    drift = frames.pop("drift_reports")
    drift = pd.concat(
        [drift, drift.iloc[[0]].assign(statistic="decision", drifted=True)], ignore_index=True
    )
    frames["runs"]["monitor_ran"] = False
    frames["runs"]["drift_detected"] = pd.array([pd.NA], dtype="boolean")
    assert attach_drift_reports(frames, lay, RUN_A[0]) is frames  # monitor did not run
    monitor_file = lay.run_dir(RUN_A[0]) / "bi" / "drift_reports.parquet"
    monitor_file.parent.mkdir(parents=True)
    drift.to_parquet(monitor_file)
    assert not root.exists()  # nothing visible to BI before publish
    out = attach_drift_reports(frames, lay, RUN_A[0])
    assert bool(out["runs"]["monitor_ran"].iloc[0]) and bool(out["runs"]["drift_detected"].iloc[0])
    write_parquet(out, root)
    files = sorted((root / "drift_reports").rglob("*.parquet"))
    assert files == [root / "drift_reports" / "run_date=2026-11-24" / f"{RUN_A[0]}.parquet"]
    assert len(pd.read_parquet(files[0])) == 3
