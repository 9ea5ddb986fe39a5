"""Contracts of the BI tables: JSON Schemas up to date, violations named (table, column, rows),
types stable whatever pandas inferred, and the layer rule of ``data_contracts``."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from data_contracts.tables import (
    CONTRACT_VERSION,
    TABLES,
    ContractViolation,
    export_schemas,
    schema_path,
    validate_frame,
)
from sqflow.bi import prepare_run
from tests._bi_frames import run_frames


def test_json_schemas_are_committed_and_fresh():
    stale = export_schemas(check=True)
    assert stale == [], (
        f"stale JSON Schemas {stale}: run `sqflow schemas` and commit data_contracts/schemas/"
    )
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "schemas", "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_every_table_has_a_version_recorded_in_its_schemas():
    assert set(TABLES) == {
        "runs",
        "cluster_centers",
        "assignments",
        "drift_reports",
        "quarantine",
        "cluster_report",
        "retrains",
    }
    for name, c in TABLES.items():
        js = json.loads(schema_path(name).read_text())
        assert js["x-sqflow-contract-version"] == CONTRACT_VERSION[name] == c.version
        meta = json.loads(c.arrow_schema().metadata[b"sqflow.contract"])
        assert meta["contract_version"] == c.version and meta["table"] == name
        assert js["required"] == c.column_names == c.arrow_schema().names
        assert sorted(js["properties"]) == sorted(c.column_names)


def test_valid_frames_pass_and_their_rows_satisfy_the_json_schema():
    frames = run_frames()
    for name, df in frames.items():
        out = validate_frame(name, df)
        assert list(out.columns) == TABLES[name].column_names
        assert len(out) == len(df)
        schema = json.loads(schema_path(name).read_text())
        table = pa.Table.from_pandas(out, schema=TABLES[name].arrow_schema(), preserve_index=False)
        for row in table.to_pylist():
            row = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
            jsonschema.validate(row, schema)
    # the drift_reports row with p_value None is null in the JSON Schema too
    bad = {**frames["drift_reports"].iloc[0].to_dict(), "p_value": 2.0}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads(schema_path("drift_reports").read_text()))


def _violation(table: str, df: pd.DataFrame) -> ContractViolation:
    with pytest.raises(ContractViolation) as ei:
        validate_frame(table, df)
    return ei.value


def test_null_in_a_non_nullable_column_names_table_column_rows():
    df = run_frames()["assignments"]
    df.loc[[3, 17], "distance"] = np.nan
    e = _violation("assignments", df)
    msg = str(e)
    assert "table 'assignments'" in msg and "'distance'" in msg and "[3, 17]" in msg
    assert {f["index"] for f in e.failures} == {3, 17}


def test_nulls_never_become_values():
    runs = run_frames()["runs"]
    runs["monitor_ran"] = pd.Series([None], dtype=object)  # bool(None) would be False
    msg = str(_violation("runs", runs))
    assert "'monitor_ran'" in msg and "null" in msg and "[0]" in msg
    asg = run_frames()["assignments"]
    asg["cluster_id"] = asg["cluster_id"].astype("Int64")
    asg.loc[8, "cluster_id"] = pd.NA
    msg = str(_violation("assignments", asg))
    assert "'cluster_id'" in msg and "[8]" in msg


def test_out_of_range_and_unknown_values_are_named():
    cc = run_frames()["cluster_centers"]
    cc.loc[2, "label_purity"] = 1.5
    cc.loc[1, "cluster_id"] = -1
    msg = str(_violation("cluster_centers", cc))
    assert "'label_purity'" in msg and "in_range" in msg and "[2]" in msg
    assert "'cluster_id'" in msg and "[1]" in msg
    runs = run_frames()["runs"]
    runs.loc[0, "status"] = "exploded"
    msg = str(_violation("runs", runs))
    assert "table 'runs'" in msg and "'status'" in msg and "exploded" in msg
    runs = run_frames()["runs"]
    runs.loc[0, "config"] = "{not json"
    assert "'config'" in str(_violation("runs", runs))
    cc = run_frames()["cluster_centers"]
    cc.at[0, "center"] = [1.0, float("inf"), 0.0]
    assert "'center'" in str(_violation("cluster_centers", cc))
    cc = run_frames()["cluster_centers"]
    cc.at[3, "center"] = [1.0, 2.0]  # another dimension than the other centers
    msg = str(_violation("cluster_centers", cc))
    assert "'center'" in msg and "[3]" in msg


def test_lossy_or_wrong_types_are_refused_not_coerced():
    asg = run_frames()["assignments"]
    asg["cluster_id"] = asg["cluster_id"].astype("float64")
    asg.loc[5, "cluster_id"] = 1.5
    msg = str(_violation("assignments", asg))
    assert "'cluster_id'" in msg and "not integers" in msg and "[5]" in msg
    asg = run_frames()["assignments"]
    asg["sample_id"] = asg["sample_id"].astype(object)
    asg.loc[7, "sample_id"] = 7
    msg = str(_violation("assignments", asg))
    assert "'sample_id'" in msg and "[7]" in msg
    q = run_frames()["quarantine"]
    q["detected_at"] = q["detected_at"].dt.tz_localize(None)
    assert "no time zone" in str(_violation("quarantine", q))
    runs = run_frames()["runs"]
    runs["n_clusters"] = np.int64(2**40)
    assert "int32 range" in str(_violation("runs", runs))


def test_missing_extra_columns_and_duplicate_keys():
    asg = run_frames()["assignments"]
    msg = str(_violation("assignments", asg.drop(columns=["label"]).assign(extra=1)))
    assert "missing ['label']" in msg and "unexpected ['extra']" in msg
    dup = pd.concat([asg, asg.iloc[[4]]], ignore_index=True)
    msg = str(_violation("assignments", dup))
    assert "uniqueness" in msg and str(len(asg)) in msg  # the duplicate's row label
    with pytest.raises(ContractViolation, match="no such table"):
        validate_frame("cluster_report_v0", asg)


def test_a_run_is_checked_across_tables():
    frames = run_frames()
    frames["assignments"].loc[9, "run_id"] = "someone-else"
    with pytest.raises(ContractViolation, match=r"table 'assignments'.*'run_id'.*\[9\]"):
        prepare_run(frames)
    frames = run_frames()
    frames["runs"] = pd.concat([frames["runs"]] * 2, ignore_index=True).assign(run_id=["a", "b"])
    with pytest.raises(ContractViolation, match="exactly one row"):
        prepare_run(frames)
    with pytest.raises(ContractViolation, match="needs its 'runs' row"):
        prepare_run({"assignments": run_frames()["assignments"]})


def test_types_are_stable_whatever_pandas_inferred():
    """Two runs whose frames pandas typed differently (object vs str, all-null columns, int
    widths, float32) give the same Arrow (Parquet) schema: the contract's."""
    a = prepare_run(run_frames())
    f = run_frames("20261127T020000Z-00000002", started="2026-11-27T02:00:00Z")
    f["runs"]["flow_run_id"] = pd.Series([None], dtype=object)
    f["runs"]["drift_detected"] = pd.Series([None], dtype=object)
    f["runs"]["started_at"] = "2026-11-27T02:00:00+00:00"  # ISO text
    f["runs"]["config"] = [{"n_clusters": 4}]  # a dict becomes JSON text
    f["assignments"]["label"] = pd.array([pd.NA] * len(f["assignments"]), dtype="Int64")
    f["assignments"]["sample_id"] = f["assignments"]["sample_id"].astype(object)
    f["assignments"]["cluster_id"] = f["assignments"]["cluster_id"].astype("int64")
    f["assignments"]["distance"] = f["assignments"]["distance"].astype("float64")
    f["cluster_centers"]["majority_label"] = None
    f["cluster_centers"]["label_purity"] = None
    f["quarantine"] = f["quarantine"].iloc[:0]
    b = prepare_run(f)
    assert set(a.arrow) == set(TABLES) - {"retrains"}  # published later (test_bi_retrains)
    for name in a.arrow:
        assert a.arrow[name].schema.equals(b.arrow[name].schema, check_metadata=True), name
        assert a.arrow[name].schema.equals(TABLES[name].arrow_schema(), check_metadata=True)
    assert json.loads(b.frames["runs"]["config"].iloc[0]) == {"n_clusters": 4}
    assert b.run_date.isoformat() == "2026-11-27"


def test_data_contracts_imports_nothing_of_ours():
    code = (
        "import sys, data_contracts.tables; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqflow', 'tasks', 'flows')); print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("shift,n_batch", [(0.0, 400), (3.0, 400), (0.0, 20)])
def test_the_monitors_drift_rows_satisfy_the_contract(shift, n_batch):
    """The drift monitor's ``drift_reports`` frame (issue 7) fits this contract as it is, for a
    stable batch, a drifted one and one too small for a decision (drifted null)."""
    drift = pytest.importorskip("sqflow.drift")
    monitor = pytest.importorskip("sqflow.pipeline.monitor")
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(600, 3))
    batch = rng.normal(size=(n_batch, 3)) + shift
    report = drift.detect_drift(
        ref, batch, policy={"statistics": ["mmd", "ks"], "min_agreeing": 1, "mmd_permutations": 100}
    )
    df = monitor.drift_report_frame(report, "20261126T020000Z-00000001", "triplet-v0001")
    out = validate_frame("drift_reports", df)
    assert out["statistic"].iloc[-1] == "decision"
    if n_batch < 200:
        assert out["drifted"].isna().all()
    else:
        assert bool(out["drifted"].iloc[-1]) == (shift > 0)


def test_cluster_report_ids_must_be_a_json_array():
    df = run_frames()["cluster_report"]
    df.loc[2, "representative_sample_ids"] = '{"not": "a list"}'
    msg = str(_violation("cluster_report", df))
    assert "'representative_sample_ids'" in msg and "json_array" in msg and "[2]" in msg


def test_duckdb_runs_table_of_an_older_contract_gets_the_new_nullable_columns(tmp_path):
    """A database from before ``retrain_outcome``/``new_encoder_version``/``degraded_reasons``
    and the ``retrains`` table still loads: the columns come by ALTER TABLE ADD COLUMN
    (additive, contract version unchanged; old rows read NULL), the table is created."""
    import duckdb

    from data_contracts.tables import get_contract
    from sqflow.bi import write_duckdb

    c = get_contract("runs")
    old_cols = c.sql_columns("duckdb")[:-3]
    assert [n for n, _, _ in c.sql_columns("duckdb")[-3:]] == [
        "retrain_outcome",
        "new_encoder_version",
        "degraded_reasons",
    ]
    path = tmp_path / "bi.duckdb"
    first = run_frames("20261124T020000Z-aaaaaaaa", started="2026-11-24T02:00:00Z")
    write_duckdb(first, path)
    con = duckdb.connect(str(path))  # turn the database back into the older layout
    con.execute("DROP TABLE retrains")
    con.execute("DELETE FROM sqflow_contracts WHERE table_name = 'retrains'")
    con.execute("DROP TABLE runs")
    con.execute(
        "CREATE TABLE runs ("
        + ", ".join(f'"{n}" {t}' + ("" if nul else " NOT NULL") for n, t, nul in old_cols)
        + ")"
    )
    con.close()
    second = run_frames("20261125T020000Z-bbbbbbbb", started="2026-11-25T02:00:00Z")
    second["runs"]["retrain_outcome"] = "refused"
    second["runs"]["new_encoder_version"] = "triplet-v0002"
    second["runs"]["degraded_reasons"] = '["report failed: OSError: disk full"]'
    write_duckdb(second, path)
    con = duckdb.connect(str(path), read_only=True)
    try:
        cols = [r[0] for r in con.execute("DESCRIBE runs").fetchall()]
        got = con.execute(
            "SELECT retrain_outcome, new_encoder_version, degraded_reasons FROM runs"
        ).fetchall()
        retrains = [r[0] for r in con.execute("DESCRIBE retrains").fetchall()]
    finally:
        con.close()
    assert cols == c.column_names
    assert got == [("refused", "triplet-v0002", '["report failed: OSError: disk full"]')]
    assert retrains == get_contract("retrains").column_names


def test_postgres_runs_table_of_an_older_contract_gets_the_new_nullable_columns(pg_url):
    """The same additive migration on PostgreSQL."""
    import psycopg

    from data_contracts.tables import get_contract
    from sqflow.bi import write_postgres

    c = get_contract("runs")
    old_cols = c.sql_columns("postgresql")[:-3]
    write_postgres(run_frames("20261124T020000Z-aaaaaaaa", started="2026-11-24T02:00:00Z"), pg_url)
    with psycopg.connect(pg_url) as con:  # turn the database back into the older layout
        con.execute("DROP TABLE retrains")
        con.execute("DELETE FROM sqflow_contracts WHERE table_name = 'retrains'")
        con.execute("DROP TABLE runs")
        con.execute(
            "CREATE TABLE runs ("
            + ", ".join(f'"{n}" {t}' + ("" if nul else " NOT NULL") for n, t, nul in old_cols)
            + ")"
        )
    second = run_frames("20261125T020000Z-bbbbbbbb", started="2026-11-25T02:00:00Z")
    second["runs"]["retrain_outcome"] = "promoted"
    second["runs"]["new_encoder_version"] = "triplet-v0003"
    write_postgres(second, pg_url)
    with psycopg.connect(pg_url) as con:
        cols = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs' "
                "AND table_schema = current_schema() ORDER BY ordinal_position"
            ).fetchall()
        ]
        got = con.execute(
            "SELECT retrain_outcome, new_encoder_version, degraded_reasons FROM runs"
        ).fetchall()
        has_retrains = con.execute("SELECT to_regclass('retrains') IS NOT NULL").fetchone()[0]
    assert cols == c.column_names
    assert got == [("promoted", "triplet-v0003", [])]  # JSONB: read back as JSON
    assert has_retrains
