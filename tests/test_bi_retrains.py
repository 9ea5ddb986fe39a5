"""The ``retrains`` BI table: one row per retrain attempt, published after the run it belongs
to through the same journal and sinks (Parquet, a DuckDB file, a real PostgreSQL server),
replacing the run's earlier retrains rows and never touching the run's other tables."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pandas as pd
import psycopg
import pytest

from data_contracts.tables import ContractViolation
from sqflow.bi import ContractVersionMismatch, journal, publish_run, publish_run_tables
from sqflow.bi._common import prepare_run_tables
from sqflow.bi.duck import run_rows as duck_rows
from sqflow.bi.parquet import committed_run_ids, write_parquet
from sqflow.pipeline.publish import retrains_frame
from tests._bi_frames import run_frames

RUN = ("20261124T020000Z-aaaaaaaa", "2026-11-24T02:00:00Z")
DAY = dt.date(2026, 11, 24)


def _lineage(n: int) -> list[dict]:
    """Lineage records as retrain_stage writes them: a failed attempt, then refused ones."""
    out = [
        {
            "run_id": RUN[0],
            "from_version": "triplet-v0001",
            "reason": "drift in run: mmd flags drift",
            "started_at": "2026-11-24T03:00:00+00:00",
            "status": "failed",
            "outcome": "failed",
            "error": "RuntimeError: out of memory",
            "current_after": "triplet-v0001",
            "finished_at": "2026-11-24T03:01:00+00:00",
        }
    ]
    for i in range(1, n):
        out.append(
            {
                "run_id": RUN[0],
                "from_version": "triplet-v0001",
                "to_version": f"triplet-v000{i + 1}",
                "reason": "drift in run: mmd flags drift",
                "started_at": f"2026-11-24T0{3 + i}:00:00+00:00",
                "status": "completed",
                "outcome": "refused",
                "gate": {
                    "criterion": "heldout_knn5_accuracy",
                    "old": 0.91,
                    "new": 0.9 - i / 100,
                    "min_gain": 0.0,
                    "n_rows": 400,
                    "promote": False,
                },
                "current_after": "triplet-v0001",
                "finished_at": f"2026-11-24T0{3 + i}:05:00+00:00",
            }
        )
    return out


def _retrains(n: int) -> pd.DataFrame:
    return retrains_frame("mnist-all", RUN[0], _lineage(n))


def _pq_retrains(pq_dir) -> pd.DataFrame:
    files = sorted((pq_dir / "retrains").glob("run_date=*/*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files]) if files else pd.DataFrame()


def _pg(url, sql):
    with psycopg.connect(url) as con:
        return con.execute(sql).fetchall()


def test_retrains_published_next_to_their_run_in_every_sink(tmp_path, pg_url):
    pq_dir, db = tmp_path / "published", tmp_path / "sqflow.duckdb"
    sinks = dict(parquet_dir=pq_dir, duckdb_path=db, postgres_url=pg_url)
    publish_run(run_frames(RUN[0], started=RUN[1], n=50), **sinks)
    res = publish_run_tables({"retrains": _retrains(3)}, run_id=RUN[0], run_date=DAY, **sinks)
    assert res.rows == {"retrains": 3}
    assert res.parquet_files["retrains"].parent.name == "run_date=2026-11-24"
    got = _pq_retrains(pq_dir)
    assert got["attempt"].tolist() == [1, 2, 3]
    assert got["outcome"].tolist() == ["failed", "refused", "refused"]
    assert got["to_version"].isna().tolist() == [True, False, False]
    assert got["gate_new_score"].tolist()[1:] == [0.89, 0.88]
    assert duck_rows(db, RUN[0])["retrains"] == 3 and duck_rows(db, RUN[0])["assignments"] == 50
    q = (
        "SELECT t.attempt, t.outcome, t.error, t.gate_rows, r.dataset FROM runs r "
        "JOIN retrains t USING (run_id) ORDER BY t.attempt"
    )
    with duckdb.connect(str(db), read_only=True) as con:
        duck = con.execute(q).fetchall()
    assert (
        duck
        == _pg(pg_url, q)
        == [
            (1, "failed", "RuntimeError: out of memory", None, "mnist-all"),
            (2, "refused", None, 400, "mnist-all"),
            (3, "refused", None, 400, "mnist-all"),
        ]
    )
    # a later attempt republishes the run's rows: replaced, not duplicated
    publish_run_tables({"retrains": _retrains(2)}, run_id=RUN[0], run_date=DAY, **sinks)
    assert len(_pq_retrains(pq_dir)) == 2 and duck_rows(db, RUN[0])["retrains"] == 2
    assert _pg(pg_url, "SELECT count(*) FROM retrains") == [(2,)]
    assert _pg(pg_url, "SELECT count(*) FROM assignments") == [(50,)]  # the run untouched
    assert committed_run_ids(pq_dir) == {RUN[0]}
    assert not list((pq_dir / journal.JOURNAL_FOLDER).glob("*.json"))


def test_a_failing_sink_leaves_the_runs_retrains_nowhere_and_the_run_whole(tmp_path):
    pq_dir, db = tmp_path / "published", tmp_path / "sqflow.duckdb"
    sinks = dict(parquet_dir=pq_dir, duckdb_path=db)
    publish_run(run_frames(RUN[0], started=RUN[1], n=50), **sinks)
    publish_run_tables({"retrains": _retrains(2)}, run_id=RUN[0], run_date=DAY, **sinks)
    with duckdb.connect(str(db)) as con:  # DuckDB now refuses the retrains table
        con.execute(
            "UPDATE sqflow_contracts SET contract_version = '0' WHERE table_name = 'retrains'"
        )
    with pytest.raises(ContractVersionMismatch, match="'retrains'"):
        publish_run_tables({"retrains": _retrains(3)}, run_id=RUN[0], run_date=DAY, **sinks)
    # Parquet got the new rows before DuckDB failed, DuckDB held the old ones: both cleared
    assert _pq_retrains(pq_dir).empty and duck_rows(db, RUN[0])["retrains"] == 0
    assert committed_run_ids(pq_dir) == {RUN[0]}
    assert duck_rows(db, RUN[0])["runs"] == 1 and duck_rows(db, RUN[0])["assignments"] == 50
    assert not list((pq_dir / journal.JOURNAL_FOLDER).glob("*.json"))


def test_recover_rolls_back_only_the_tables_of_a_derived_publish_that_died(tmp_path):
    pq_dir, db = tmp_path / "published", tmp_path / "sqflow.duckdb"
    jdir = pq_dir / journal.JOURNAL_FOLDER
    publish_run(run_frames(RUN[0], started=RUN[1], n=50), parquet_dir=pq_dir, duckdb_path=db)
    publish_run_tables(
        {"retrains": _retrains(2)}, run_id=RUN[0], run_date=DAY, parquet_dir=pq_dir, duckdb_path=db
    )
    # a process that died after writing Parquet: its entry is left behind
    journal.begin(
        jdir,
        RUN[0],
        run_date=DAY.isoformat(),
        parquet_dir=pq_dir,
        duckdb_path=db,
        postgres_url=None,
        tables=["retrains"],
    )
    journal.note_sink(jdir, RUN[0], "parquet", ["retrains"])
    write_parquet(prepare_run_tables({"retrains": _retrains(3)}, RUN[0], DAY), pq_dir)
    assert (jdir / f"{RUN[0]}.retrains.json").exists() and len(_pq_retrains(pq_dir)) == 3
    actions = journal.recover(jdir, is_committed=lambda run_id: True)
    assert actions[0]["action"] == "rolled back" and actions[0]["tables"] == ["retrains"]
    assert _pq_retrains(pq_dir).empty and duck_rows(db, RUN[0])["retrains"] == 0
    assert committed_run_ids(pq_dir) == {RUN[0]}  # the run itself stays committed
    assert duck_rows(db, RUN[0])["assignments"] == 50
    assert not list(jdir.glob("*.json"))
    # rolling the run itself back takes its retrains rows with it
    publish_run_tables(
        {"retrains": _retrains(1)}, run_id=RUN[0], run_date=DAY, parquet_dir=pq_dir, duckdb_path=db
    )
    journal.rollback_run(RUN[0], parquet_dir=pq_dir, duckdb_path=db)
    assert _pq_retrains(pq_dir).empty and sum(duck_rows(db, RUN[0]).values()) == 0


def test_retrains_rows_satisfy_the_committed_json_schema():
    import jsonschema

    from data_contracts.tables import TABLES, schema_path

    run = prepare_run_tables({"retrains": _retrains(3)}, RUN[0], DAY)
    assert run.arrow["retrains"].schema.equals(TABLES["retrains"].arrow_schema(), True)
    schema = json.loads(schema_path("retrains").read_text())
    for row in run.arrow["retrains"].to_pylist():
        row = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
        jsonschema.validate(row, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**row, "attempt": 0}, schema)


def test_derived_tables_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(ContractViolation, match="'runs'"):
        prepare_run_tables(run_frames(RUN[0], started=RUN[1]), RUN[0], DAY)
    other = _retrains(2).assign(run_id="20261125T020000Z-bbbbbbbb")
    with pytest.raises(ContractViolation, match="column 'run_id' must be"):
        publish_run_tables({"retrains": other}, run_id=RUN[0], run_date=DAY, parquet_dir=tmp_path)
    bad = _retrains(2).assign(outcome=["failed", "maybe"])
    with pytest.raises(ContractViolation, match="'outcome'"):
        publish_run_tables({"retrains": bad}, run_id=RUN[0], run_date=DAY, parquet_dir=tmp_path)
    assert not list(tmp_path.rglob("*.parquet"))


def test_publish_retrains_stage_reads_the_lineage_of_a_recorded_run(tmp_path):
    from data_contracts.run_record import RunRecord
    from data_contracts.settings import PipelineSettings
    from sqflow.atomic_files import atomic_write_text
    from sqflow.layout import OutputLayout
    from sqflow.pipeline.publish import publish_retrains_stage

    cfg = PipelineSettings(output_dir=tmp_path / "out")
    lay = OutputLayout.of(cfg)
    assert publish_retrains_stage(cfg, RUN[0])["published"] is False  # no run record
    rec = RunRecord(run_id=RUN[0], started_at=RUN[1], status="completed", dataset="mnist-all")
    atomic_write_text(lay.run_dir(RUN[0]) / "run.json", rec.to_json())
    assert publish_retrains_stage(cfg, RUN[0])["published"] is False  # no lineage yet
    lay.models_dir.mkdir(parents=True)
    other = {**_lineage(1)[0], "run_id": "20261125T020000Z-bbbbbbbb"}
    lines = [_lineage(2)[0], other, _lineage(2)[1]]
    (lay.models_dir / "lineage.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in lines) + "not json\n"
    )
    out = publish_retrains_stage(cfg, RUN[0])
    assert out["published"] and out["rows"] == 2, out
    with duckdb.connect(str(lay.duckdb_path), read_only=True) as con:
        got = con.execute(
            "SELECT attempt, outcome, from_version, to_version, gate_old_score, started_at "
            "FROM retrains ORDER BY attempt"
        ).fetchall()
    assert [g[:5] for g in got] == [
        (1, "failed", "triplet-v0001", None, None),
        (2, "refused", "triplet-v0001", "triplet-v0002", 0.91),
    ]
    assert got[1][5] == pd.Timestamp("2026-11-24T04:00:00Z").to_pydatetime()
