"""Fault-injection benchmark (issue 14): kill -9 a real nightly process at every stage boundary
and twice inside embed, cluster and publish, each followed by a normal run; and damage an
embedding store in every way the issue lists.

Per kill point it reports, for the killed run: the rows a BI reader sees in each sink right
after the kill and after the next run (must be 0 or the whole run), orphan rows (rows whose run
has no ``runs`` row in that sink, or a ``runs`` row whose run.json is not completed), stray
temporary files and journal entries left after the next run, processes of the killed run still
alive 10 s after the kill (orphans: the ephemeral Prefect server, Dask workers), the killed
run's state in run.json and in Prefect after the next run, and whether the next run completed.

The nightly runs as a separate process (``nightly(config=...)``, its own ephemeral Prefect
server, one Prefect database shared by all runs of the matrix), on a tiny npy source (MNIST
images, 400 rows in 4 chunks) with a tiny encoder trained once. The kill is the process's own
``SIGKILL`` at a named point (``SQFLOW_KILL_AT``, :mod:`sqflow.fault_points`): the same as
``kill -9`` from outside at that moment. PostgreSQL takes part when its server binaries are
installed (a throw-away server, as in the tests).

Usage::

    .venv/bin/python bench/fault_injection.py [--points a,b,...] [--no-postgres]

Prints the tables and writes ``bench/results/fault_injection.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

#: every kill point of the matrix, in the order a nightly reaches them
KILL_POINTS = [
    "start",
    "after-sample",
    "embed-chunk@2",
    "embed-chunk@4",
    "after-embed",
    "after-monitor",
    "cluster-pass@1",
    "cluster-pass@2",
    "after-cluster",
    "after-report",
    "publish-parquet-data",
    "publish-parquet",
    "publish-duckdb",
    "after-publish",
]
# The retrain's kill points (register-tmp, register-renamed, set-current, after-retrain,
# after-retrain-publish; sqflow.fault_points) are not in this matrix: its upright source never
# drifts, so no night retrains. tests/test_kill_retrain.py kills them on a rotated source.

N_ROWS = 400
N_CLUSTERS = 4
BI_TABLES = (
    "runs",
    "cluster_centers",
    "assignments",
    "quarantine",
    "drift_reports",
    "cluster_report",
)


# ------------------------------------------------------------------------------ workspace


def _orphan_rows(con: Any, done: set[str]) -> int:
    """Rows of the BI tables in a DB-API-like connection (DuckDB, psycopg) whose run has no
    ``runs`` row there or whose run.json is not completed (``done``: the completed run ids)."""
    runs = {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
    n = 0
    for t in BI_TABLES:
        for rid, c in con.execute(f'SELECT run_id, count(*) FROM "{t}" GROUP BY 1').fetchall():
            if rid not in runs or rid not in done:
                n += c
    return n


class Workspace:
    """A tiny npy source, a trained tiny encoder, one output folder, one Prefect database."""

    def __init__(
        self, root: Path, postgres_url: str | None = None, api_url: str | None = None
    ) -> None:
        self.root = root
        self.api_url = api_url  # a running Prefect server (None: each run starts its own)
        self.out = root / "out"
        self.models = root / "models"
        self.prefect_home = root / "prefect"
        self.postgres_url = postgres_url
        self.tag = f"sqflow-fault-{os.getpid()}-{int(time.time())}"

    def config(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.out),
            "models_dir": str(self.models),
            "source": {
                "kind": "npy",
                "path": str(self.root / "x.npy"),
                "labels_path": str(self.root / "y.npy"),
            },
            "n_clusters": N_CLUSTERS,
            "max_iter": 3,
            "store_chunk_rows": 100,
            "embed_batch_size": 100,
            "dask_workers": 1,
            "train_if_missing": False,
            "lock_timeout_s": 60,
        }

    def prepare(self) -> None:
        """Write the npy source (MNIST test images 0..399) and train the encoder once."""
        from flows.settings import flow_settings
        from sqflow.datasets import load_mnist
        from sqflow.pipeline.encoder import train_encoder_stage

        x, y = load_mnist("test")
        np.save(self.root / "x.npy", x[:N_ROWS])
        np.save(self.root / "y.npy", y[:N_ROWS].astype(np.int64))
        train_encoder_stage(
            flow_settings(
                {
                    **self.config(),
                    "output_dir": str(self.root / "train-out"),
                    "encoder_train_rows": 200,
                    "encoder_epochs": 1,
                    "reference_rows": 100,
                }
            )
        )

    def env(self, kill_at: str | None) -> dict[str, str]:
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "SQFLOW_FAULT_TAG": self.tag,  # inherited by every process the run starts
            "PYTHONPATH": str(ROOT),
        }
        env.pop("PREFECT_API_URL", None)
        if self.api_url:
            env["PREFECT_API_URL"] = self.api_url
        env.pop("SQFLOW_KILL_AT", None)
        env.pop("SQFLOW_POSTGRES_URL", None)
        if kill_at:
            env["SQFLOW_KILL_AT"] = kill_at
        if self.postgres_url:
            env["SQFLOW_POSTGRES_URL"] = self.postgres_url
        return env

    def run_nightly(self, kill_at: str | None, timeout: float = 600) -> dict[str, Any]:
        """One nightly process; returns its exit code, wall seconds and the tail of its log."""
        code = (
            "import json, sys; from flows.nightly import nightly; "
            "nightly(config=json.loads(sys.argv[1]))"
        )
        before = set(self.run_ids())
        t0 = time.perf_counter()
        # the log goes to a file, not a pipe: an orphan child holding a pipe open would block
        # the wait for end-of-file (and hide the orphan from the measurement)
        log_path = self.root / "nightly.log"
        with open(log_path, "wb") as log:
            p = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(self.config())],
                env=self.env(kill_at),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            rc = p.wait(timeout=timeout)
        new = sorted(set(self.run_ids()) - before)
        return {
            "rc": rc,
            "killed": rc == -signal.SIGKILL,
            "seconds": round(time.perf_counter() - t0, 1),
            "run_id": new[-1] if new else None,
            "log_tail": log_path.read_text(errors="replace")[-3000:],
        }

    # -------------------------------------------------------------------------- observing
    def run_ids(self) -> list[str]:
        d = self.out / "runs"
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def run_record(self, run_id: str) -> dict[str, Any]:
        p = self.out / "runs" / run_id / "run.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def tagged_processes(self) -> list[int]:
        """Living processes started by any run of this workspace (they carry the tag)."""
        needle = f"SQFLOW_FAULT_TAG={self.tag}".encode()
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] != "Z":
                        out.append(int(entry))
            except OSError:
                continue
        return out

    def orphan_processes(self, wait_s: float = 10.0) -> list[str]:
        """Processes of the killed run still alive after ``wait_s`` (killed here afterwards, so
        that one point's orphans do not count at the next)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and self.tagged_processes():
            time.sleep(0.5)
        found = []
        for pid in self.tagged_processes():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{pid}: {cmd[:120]}")
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return found

    def parquet_rows(self, run_id: str) -> dict[str, Any]:
        """Rows of ``run_id`` per table as a BI reader of the Parquet hand-off sees them (only
        runs whose ``runs`` file, the commit marker, exists) and as raw files on disk."""
        pub = self.out / "published"
        raw = {}
        for t in BI_TABLES:
            files = list((pub / t).glob(f"run_date=*/{run_id}.parquet"))
            raw[t] = int(sum(len(pd.read_parquet(f)) for f in files))
        committed = raw["runs"] > 0
        return {"visible": raw if committed else dict.fromkeys(BI_TABLES, 0), "raw": raw}

    def duckdb_rows(self, run_id: str) -> dict[str, int]:
        from sqflow.bi.duck import run_rows

        return {t: run_rows(self.out / "sqflow.duckdb", run_id).get(t, 0) for t in BI_TABLES}

    def postgres_rows(self, run_id: str) -> dict[str, int] | None:
        if not self.postgres_url:
            return None
        from sqflow.bi.postgres import run_rows

        return {t: run_rows(self.postgres_url, run_id).get(t, 0) for t in BI_TABLES}

    def sink_rows(self, run_id: str) -> dict[str, Any]:
        rows = {"parquet": self.parquet_rows(run_id)["visible"], "duckdb": self.duckdb_rows(run_id)}
        pg = self.postgres_rows(run_id)
        if pg is not None:
            rows["postgres"] = pg
        return rows

    def orphan_rows(self, exclude: tuple[str, ...] = ()) -> dict[str, int]:
        """Rows in each sink that no committed run owns: rows of a run without a ``runs`` row
        in that sink, plus every row of a run whose run.json is not completed (runs in
        ``exclude``, e.g. one just killed and not yet cleaned up, are left out)."""
        import duckdb

        done = {r for r in self.run_ids() if self.run_record(r).get("status") == "completed"}
        done |= set(exclude)
        out = {}
        pub = self.out / "published"
        marker = {p.stem for p in pub.glob("runs/run_date=*/*.parquet")}
        n = 0
        for t in BI_TABLES:
            for f in pub.glob(f"{t}/run_date=*/*.parquet"):
                if f.stem not in marker or f.stem not in done:
                    n += len(pd.read_parquet(f))
        out["parquet"] = n
        db = self.out / "sqflow.duckdb"
        if db.exists():
            con = duckdb.connect(str(db), read_only=True)
            try:
                out["duckdb"] = _orphan_rows(con, done)
            finally:
                con.close()
        if self.postgres_url:
            import psycopg

            with psycopg.connect(self.postgres_url) as con:
                out["postgres"] = _orphan_rows(con, done)
        return out

    def stray_files(self) -> list[str]:
        """Temporary files of the atomic-write protocol and publish-journal entries anywhere
        under the output and the registry (after a run they must be gone)."""
        found = []
        for base in (self.out, self.models):
            for dirpath, dirnames, filenames in os.walk(base):
                for name in dirnames + filenames:
                    if name.endswith(".tmp") or name.endswith(".tmp.wal"):
                        found.append(str(Path(dirpath) / name))
        found += [str(p) for p in (self.out / "published" / "_sqflow_journal").glob("*.json")]
        return sorted(found)

    def prefect_state(self, flow_run_id: str | None) -> str | None:
        """State of a flow run: from the server at ``api_url``, else read from the Prefect
        database the runs' ephemeral servers share (SQLite under PREFECT_HOME)."""
        if not flow_run_id:
            return None
        if self.api_url:  # ask the server
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                return client.read_flow_run(flow_run_id).state.name
        db = self.prefect_home / "prefect.db"
        if not db.exists():
            return None
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute(
                "SELECT state_type, state_name FROM flow_run WHERE id = ? OR id = ?",
                (flow_run_id, flow_run_id.replace("-", "")),
            ).fetchone()
        finally:
            con.close()
        return f"{row[1]}" if row else None


def whole_or_nothing(rows: dict[str, int], rec: dict[str, Any]) -> str:
    """ "none" (no row), "whole" (the runs row and every row the run produced), else "PARTIAL"."""
    if sum(rows.values()) == 0:
        return "none"
    n = int((rec.get("sample") or {}).get("n_selected") or -1)
    ok = rows["runs"] == 1 and rows["assignments"] == n and rows["cluster_centers"] == N_CLUSTERS
    return "whole" if ok else "PARTIAL"


# ------------------------------------------------------------------------------ kill matrix
def kill_and_recover(ws: Workspace, point: str) -> dict[str, Any]:
    """Kill a nightly at ``point``, observe, run the next nightly normally, observe again."""
    killed = ws.run_nightly(point)
    rid = killed["run_id"]
    row: dict[str, Any] = {"point": point, "killed": killed["killed"], "killed_run": rid}
    if not killed["killed"]:
        row["error"] = f"not killed (rc {killed['rc']}): {killed['log_tail'][-800:]}"
    row["orphan_processes"] = ws.orphan_processes()
    rec = ws.run_record(rid) if rid else {}
    row["run_json_after_kill"] = rec.get("status", "no run.json")
    after_kill = ws.sink_rows(rid) if rid else {}
    row["rows_after_kill"] = after_kill
    row["visible_after_kill"] = {s: whole_or_nothing(r, rec) for s, r in after_kill.items()}
    nxt = ws.run_nightly(None)
    row["next_run"] = nxt["run_id"]
    row["next_completed"] = (
        nxt["rc"] == 0 and ws.run_record(nxt["run_id"]).get("status") == "completed"
    )
    if not row["next_completed"]:
        row["next_error"] = nxt["log_tail"][-1500:]
    row["orphan_processes"] += ws.orphan_processes(wait_s=2.0)  # the next run left none either
    rec = ws.run_record(rid) if rid else {}
    row["run_json_after_next"] = rec.get("status", "no run.json")
    after = ws.sink_rows(rid) if rid else {}
    row["rows_after_next"] = after
    row["visible_after_next"] = {s: whole_or_nothing(r, rec) for s, r in after.items()}
    row["orphan_rows"] = ws.orphan_rows()
    row["stray_files"] = ws.stray_files()
    row["prefect_state"] = ws.prefect_state(rec.get("flow_run_id"))
    row["seconds"] = killed["seconds"] + nxt["seconds"]
    return row


def row_ok(row: dict[str, Any], rec_status_ok=("crashed", "completed")) -> bool:
    """The issue's target for one kill point."""
    return bool(
        row["killed"]
        and row["next_completed"]
        and all(v in ("none", "whole") for v in row["visible_after_kill"].values())
        and all(v in ("none", "whole") for v in row["visible_after_next"].values())
        and (
            all(v == "none" for v in row["visible_after_next"].values())
            if row["run_json_after_next"] != "completed"
            else all(v == "whole" for v in row["visible_after_next"].values())
        )
        and row["run_json_after_next"] in rec_status_ok
        and not any(row["orphan_rows"].values())
        and not row["stray_files"]
        and not row["orphan_processes"]
        and row["prefect_state"] in ("Crashed", "Completed")
    )


# ------------------------------------------------------------------------------ store damage
def store_damage(store_path: Path, work: Path) -> list[dict[str, Any]]:
    """Damage copies of a real run's embedding store in every way the issue lists; report the
    error reading raises and what :func:`sqflow.store.verify_store` says."""
    from sqflow.store import open_assignments, open_store, verify_store

    def chunk(p: Path, array: str, k: int) -> Path:
        if array == "embedding":
            return p / array / "c" / str(k) / "0"
        if array in ("cluster_id", "distance"):
            (name,) = [d.name for d in (p / "assignments").iterdir() if d.is_dir()]
            return p / "assignments" / name / array / "c" / str(k)
        return p / array / "c" / str(k)

    def damage(how: str, p: Path, array: str) -> None:
        f = chunk(p, array, 1)
        if how == "delete":
            f.unlink()
        elif how == "truncate":
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
        elif how == "flip":
            b = bytearray(f.read_bytes())
            b[len(b) // 2] ^= 0x40
            f.write_bytes(bytes(b))
        elif how == "swap":
            g = chunk(p, array, 2)
            a, b = f.read_bytes(), g.read_bytes()
            f.write_bytes(b)
            g.write_bytes(a)

    def read_all(p: Path) -> None:
        s = open_store(p)
        s.read_embeddings()
        s.read_sample_ids()
        s.read_labels()
        (name,) = [d.name for d in (p / "assignments").iterdir() if d.is_dir()]
        a = open_assignments(s, name=name)
        a.read_cluster_ids()
        a.read_distances()

    cases = [
        (how, arr)
        for arr in ("embedding", "sample_id", "label", "cluster_id")
        for how in ("delete", "truncate", "flip", "swap")
    ]
    cases += [("broken zarr.json", "zarr.json"), ("edited encoder_version", "attributes")]
    rows = []
    for how, arr in cases:
        p = work / f"damaged-{arr}-{how.replace(' ', '_')}.zarr"
        shutil.rmtree(p, ignore_errors=True)
        shutil.copytree(store_path, p)
        if how == "broken zarr.json":
            (p / "zarr.json").write_text('{"zarr_format": 3, "node_')
        elif how == "edited encoder_version":
            meta = json.loads((p / "zarr.json").read_text())
            meta["attributes"]["encoder_version"] = "triplet-v9999"
            (p / "zarr.json").write_text(json.dumps(meta))
        else:
            damage(how, p, arr)
        try:
            read_all(p)
            error = None
        except Exception as exc:  # noqa: BLE001 - the figure is the error
            error = f"{type(exc).__name__}: {exc}"
        rep = verify_store(p)
        rows.append(
            {
                "damage": how,
                "target": arr,
                "read_error": (error or "NONE (undetected)").replace(str(work), "<work>")[:240],
                "verify_status": rep.status,
                "verify_ok": rep.ok,
                "detected": error is not None and not rep.ok,
            }
        )
        shutil.rmtree(p, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=",".join(KILL_POINTS))
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="no new runs: report the kill points already measured in --work (partial.json), "
        "run the store-damage cases and write the results",
    )
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench._report import machine, print_table, write_results

    work = Path(args.work or tempfile.mkdtemp(prefix="sqflow-fault-"))
    work.mkdir(parents=True, exist_ok=True)
    pg = None
    url = None
    if not args.no_postgres and not args.report_only:
        from tests._pg_server import PgServer, pg_bindir

        if pg_bindir():
            pg = PgServer(pg_bindir())
            pg.start()
            url = pg.create_database()
    t0 = time.perf_counter()
    try:
        ws = Workspace(work, url)
        if args.report_only:
            rows = json.loads((work / "partial.json").read_text())
            first = json.loads((work / "first.json").read_text())
            todo = []
        else:
            ws.prepare()
            first = ws.run_nightly(None)  # a completed run before the matrix: must stay whole
            assert first["rc"] == 0, first["log_tail"]
            (work / "first.json").write_text(json.dumps(first))
            rows = []
            todo = args.points.split(",")
        for point in todo:
            row = kill_and_recover(ws, point)
            row["ok"] = row_ok(row)
            rows.append(row)
            print(f"{point}: ok={row['ok']} ({row['seconds']} s)", flush=True)
            (work / "partial.json").write_text(json.dumps(rows, indent=1, default=str))
        keep = ws.sink_rows(first["run_id"])
        first_whole = {
            s: whole_or_nothing(r, ws.run_record(first["run_id"])) for s, r in keep.items()
        }
        store = ws.out / "runs" / rows[-1]["next_run"] / "embeddings.zarr"
        damage = store_damage(store, work)
    finally:
        if pg is not None:
            pg.stop()
    table_rows = []
    for r in rows:
        sinks = list(r["rows_after_kill"])
        table_rows.append(
            {
                "kill point": r["point"],
                "visible after kill": ", ".join(f"{s} {r['visible_after_kill'][s]}" for s in sinks),
                "after next run": ", ".join(f"{s} {r['visible_after_next'][s]}" for s in sinks),
                "run.json": f"{r['run_json_after_kill']} -> {r['run_json_after_next']}",
                "Prefect": r["prefect_state"],
                "orphan rows": sum(r["orphan_rows"].values()),
                "stray files": len(r["stray_files"]),
                "orphan processes": len(r["orphan_processes"]),
                "next run completed": r["next_completed"],
                "ok": r["ok"],
            }
        )
    cols = list(table_rows[0]) if table_rows else []
    md = ["## Kill matrix", "", print_table(table_rows, cols), ""]
    dcols = ["damage", "target", "read_error", "verify_status", "detected"]
    md += ["## Store damage", "", print_table(damage, dcols), ""]
    measured = [r["point"] for r in rows]
    payload = {
        "machine": machine(),
        "postgres": any("postgres" in r["rows_after_kill"] for r in rows),
        "kill_points_not_measured": [p for p in KILL_POINTS if p not in measured],
        "seconds": round(time.perf_counter() - t0, 1),
        "first_run_still_whole": first_whole,
        "kill_matrix": rows,
        "all_kill_points_ok": all(r["ok"] for r in rows),
        "store_damage": damage,
        "all_damage_detected": all(d["detected"] for d in damage),
    }
    write_results("fault_injection", payload)
    (ROOT / "bench" / "results" / "fault_injection.md").write_text("\n".join(md))
    print(
        f"all kill points ok: {payload['all_kill_points_ok']}; "
        f"all damage detected: {payload['all_damage_detected']}; first run {first_whole}"
    )
    return 0 if payload["all_kill_points_ok"] and payload["all_damage_detected"] else 1


if __name__ == "__main__":
    sys.exit(main())
