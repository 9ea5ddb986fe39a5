"""The issue's check: run the real ``nightly`` flow (Prefect test harness, Dask LocalCluster,
built-in MNIST subset, encoder trained on the fly) twice, publishing to Parquet, DuckDB and a
real PostgreSQL server whose URL comes from a Prefect Secret block; then query DuckDB and
PostgreSQL the way a BI tool would (plain SQL) and compare with the runs' own results."""

from __future__ import annotations

import pandas as pd
import pytest

SIZES_SQL = """SELECT run_id, cluster_id, count(*) AS n FROM assignments
               GROUP BY run_id, cluster_id ORDER BY run_id, cluster_id"""
RUNS_SQL = """SELECT run_id, n_samples, n_quarantined, n_clusters, objective, drift_detected,
                     encoder_version FROM runs ORDER BY started_at"""
DRIFT_SQL = """SELECT r.started_at, d.statistic, d.value, d.drifted FROM drift_reports d
               JOIN runs r USING (run_id) ORDER BY r.started_at, d.statistic"""
PURITY_SQL = """SELECT run_id, cluster_id, size, majority_label, label_purity FROM cluster_centers
                ORDER BY run_id, cluster_id"""


def _expected(recs):
    sizes, runs, purity = set(), [], []
    for rec in recs:
        rid = rec["run_id"]
        for c in rec["cluster"]["clusters"]:
            if c["size"]:
                sizes.add((rid, int(c["cluster_id"]), int(c["size"])))
            purity.append(
                (rid, int(c["cluster_id"]), int(c["size"]), c["majority_label"], c["label_purity"])
            )
        runs.append(
            (
                rid,
                int(rec["sample"]["n_selected"]),
                int(rec["sample"]["n_quarantined"]),
                int(rec["n_clusters"]),
                float(rec["cluster"]["objective"]),
            )
        )
    return sizes, runs, purity


def _drift_expected(recs):
    """(statistic, value) rows the runs themselves computed (none while the monitor is not part
    of nightly: then every runs.drift_detected is null, never a stand-in)."""
    out = []
    for rec in recs:
        mon = rec.get("monitor")
        if isinstance(mon, dict) and mon.get("statistics") is not None:
            out += [(rec["run_id"], s["statistic"], float(s["value"])) for s in mon["statistics"]]
    return out


def _check(conn_rows, recs):
    sizes, runs, purity = _expected(recs)
    got_sizes = {(r, int(c), int(n)) for r, c, n in conn_rows["sizes"]}
    assert got_sizes == sizes
    got_runs = conn_rows["runs"]
    assert [r[:4] for r in got_runs] == [r[:4] for r in runs]
    for g, e in zip(got_runs, runs):
        assert g[4] == pytest.approx(e[4], rel=1e-12)
        assert g[6] == recs[0]["encoder_version"]
    got_purity = conn_rows["purity"]
    assert len(got_purity) == len(purity)
    for g, e in zip(got_purity, purity):
        assert tuple(g[:4]) == e[:4]
        assert (g[4] is None and e[4] is None) or g[4] == pytest.approx(e[4], rel=1e-12)
    drift = _drift_expected(recs)
    if drift:
        got = {(s, v) for _, s, v, _ in conn_rows["drift"]}
        assert {(s, v) for _, s, v in drift} <= got
    else:
        assert conn_rows["drift"] == []
        assert all(r[5] is None for r in got_runs)  # no monitor: no drift decision


def test_nightly_publishes_bi_tables_that_match_the_run(
    prefect_harness, postgres_server, tmp_path, monkeypatch
):
    import duckdb
    import psycopg
    from prefect.artifacts import Artifact
    from prefect.blocks.system import Secret

    from flows.nightly import nightly

    url = postgres_server.create_database()
    Secret(value=url.replace("sqflow@", "sqflow:pw-never-logged@")).save(
        "sqflow-bi-test-pg", overwrite=True
    )
    monkeypatch.delenv("SQFLOW_POSTGRES_URL", raising=False)
    monkeypatch.setenv("SQFLOW_POSTGRES_SECRET_BLOCK", "sqflow-bi-test-pg")
    out = tmp_path / "out"
    cfg = {
        "output_dir": str(out),
        "encoder_train_rows": 1000,
        "encoder_epochs": 1,
        "reference_rows": 500,
        "n_clusters": 6,
        "max_iter": 3,
        "store_chunk_rows": 512,
        "dask_workers": 2,
    }
    recs = [
        nightly(config={**cfg, "sample": {"mode": "uniform", "n": 700, "seed": 1}}),
        nightly(config={**cfg, "sample": {"mode": "incremental", "n": 400}}),
    ]
    assert [r["status"] for r in recs] == ["completed", "completed"]

    con = duckdb.connect(str(out / "sqflow.duckdb"), read_only=True)
    try:
        rows = {
            "sizes": con.execute(SIZES_SQL).fetchall(),
            "runs": con.execute(RUNS_SQL).fetchall(),
            "drift": con.execute(DRIFT_SQL).fetchall(),
            "purity": con.execute(PURITY_SQL).fetchall(),
        }
    finally:
        con.close()
    _check(rows, recs)

    with psycopg.connect(url) as c:
        rows = {
            "sizes": c.execute(SIZES_SQL).fetchall(),
            "runs": c.execute(RUNS_SQL).fetchall(),
            "drift": c.execute(DRIFT_SQL).fetchall(),
            "purity": c.execute(PURITY_SQL).fetchall(),
        }
        assert c.execute("SELECT count(*) FROM assignments").fetchone()[0] == 1100
    _check(rows, recs)

    # the Parquet datasets hold the same rows, one file per run and table
    asg = pd.concat(
        pd.read_parquet(p) for p in (out / "published" / "assignments").rglob("*.parquet")
    )
    assert asg.groupby("run_id").size().to_dict() == {
        recs[0]["run_id"]: 700,
        recs[1]["run_id"]: 400,
    }
    # the publish step left a readable artifact without the password: one version per run
    # under the dataset's key
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.artifacts import artifact_key

    key = artifact_key("bi", recs[0]["dataset"])
    assert recs[1]["dataset"] == recs[0]["dataset"] and Artifact.get(key) is not None
    with get_client(sync_client=True) as client:
        versions = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert sorted(r["run_id"] for r in recs) == sorted(
        next(r["run_id"] for r in recs if r["run_id"] in a.data) for a in versions
    )
    for art in versions:
        assert "| assignments | v1 |" in art.data
        assert "pw-never-logged" not in art.data and "***" in art.data
    for rec in recs:
        assert rec["publish"]["postgres"] and "pw-never-logged" not in rec["publish"]["postgres"]
