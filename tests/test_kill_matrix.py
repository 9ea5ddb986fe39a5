"""Kill matrix (issue 14): real nightly processes killed with SIGKILL at representative points,
each followed by the next run, on a tiny npy source and a tiny encoder.

The process kills itself at a named point (``SQFLOW_KILL_AT``, :mod:`sqflow.fault_points`):
``kill -9`` at that moment. The runs form a chain, each run's start cleaning up after the one
before: killed inside embed (at its 2nd chunk) -> killed inside publish between the sinks
(Parquet and DuckDB committed, run.json still "running") -> a normal run. After each process the killed run's rows in every sink are 0 or the whole run
(a BI reader's view), and after the next run: the killed run is recorded as crashed in run.json
and Crashed in Prefect, has no rows anywhere, no orphan rows, no stray temporary files or
journal entries, no orphan process; the last run completes. The full matrix (14 points, each
with a normal run, PostgreSQL too; also the kill between the Parquet data files and the
``runs`` marker) is ``bench/fault_injection.py``; the journal cases on their own are in
``test_bi_journal.py``.

The runs talk to the session's Prefect test server (starting an ephemeral server per process
would double the test's time); the ephemeral-server case is covered by the benchmark and by
the process-guard test in ``test_bi_journal.py``.
"""

from __future__ import annotations

from bench.fault_injection import Workspace, whole_or_nothing


def _assert_cleaned(ws: Workspace, killed: str, current: str) -> None:
    rec = ws.run_record(killed)
    assert rec["status"] == "crashed", rec
    assert "process died" in rec["error"]
    rows = ws.sink_rows(killed)
    assert {s: whole_or_nothing(r, rec) for s, r in rows.items()} == dict.fromkeys(rows, "none")
    assert ws.parquet_rows(killed)["raw"] == dict.fromkeys(ws.parquet_rows(killed)["raw"], 0)
    # (the run killed just now is cleaned up by the next one: not counted yet)
    assert not any(ws.orphan_rows(exclude=(current,)).values()), ws.orphan_rows()
    assert [f for f in ws.stray_files() if current not in f] == []
    assert ws.prefect_state(rec["flow_run_id"]) == "Crashed"


def test_killed_nightlies_leave_nothing_half_visible(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    ws = Workspace(tmp_path, api_url=PREFECT_API_URL.value())
    ws.prepare()
    chain = ["embed-chunk@2", "publish-duckdb", None]
    previous = None
    for point in chain:
        res = ws.run_nightly(point, timeout=400)
        rid = res["run_id"]
        if point is None:
            assert res["rc"] == 0, res["log_tail"]
            assert ws.run_record(rid)["status"] == "completed"
        else:
            assert res["killed"], f"{point}: not killed (rc {res['rc']}): {res['log_tail']}"
        assert ws.orphan_processes(wait_s=10) == []
        if previous is not None:  # this run's start cleaned up after the killed one
            _assert_cleaned(ws, previous, rid)
        rec = ws.run_record(rid)
        seen = {s: whole_or_nothing(r, rec) for s, r in ws.sink_rows(rid).items()}
        if point is None:
            assert seen == dict.fromkeys(seen, "whole")
        elif point == "publish-duckdb":
            # both sinks committed, run.json still "running": whole, then rolled back above
            assert rec["status"] == "running" and seen == dict.fromkeys(seen, "whole")
        else:
            assert rec["status"] == "running" and seen == dict.fromkeys(seen, "none")
        previous = rid if point is not None else None
    assert len(ws.run_ids()) == len(chain)


def test_kill_point_fires_only_at_the_named_point_and_count():
    """``point@n`` kills at the n-th time ``point`` is reached, never at another point."""
    import os
    import signal
    import subprocess
    import sys

    code = (
        "from sqflow.fault_points import kill_point\n"
        "kill_point('after-embed'); print('other point passed', flush=True)\n"
        "kill_point('after-sample'); print('first time passed', flush=True)\n"
        "kill_point('after-sample'); print('second time passed', flush=True)\n"
    )
    env = {**os.environ, "SQFLOW_KILL_AT": "after-sample@2"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL
    assert p.stdout.split("\n")[:2] == ["other point passed", "first time passed"]
    assert "second time passed" not in p.stdout
    env.pop("SQFLOW_KILL_AT")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 0 and "second time passed" in p.stdout
