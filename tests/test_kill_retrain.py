"""Kill matrix of the retrain (issue 18): real nightly processes whose drift starts the
in-process retrain, killed with SIGKILL at each boundary of the retrain, each followed by the
next run; then a stand-alone ``retrain`` flow process.

The source is a rotated MNIST batch (200 rows) against a tiny encoder trained on upright
images (bench/fault_injection.py's workspace with its own source), so every night drifts and retrains, with
``retrain_min_gain=-1`` so that every retrain is promoted (the ``set-current`` boundary is
reached). The points, in the order a retrain reaches them: ``register-tmp`` (the new version's
folder written aside, not renamed), ``register-renamed`` (a registered version, its reference
not embedded, no lineage line), ``set-current`` (CURRENT names the new version, no lineage
line, the batch not re-embedded), ``reembed-swap`` (the run's store moved aside, the
re-embedded one not yet renamed in: the run has no live store), ``after-retrain`` (lineage written, ``retrains`` not
published), ``publish-parquet@2`` / ``publish-duckdb@2`` (inside the ``retrains`` publish: the
first publish of the process is the night's own), ``after-retrain-publish``.

After each kill: CURRENT names a complete version (encoder.pt, model.json, rows.parquet), every
version folder is complete, the lineage has no torn line, the killed run's ``retrains`` rows
are none or whole (its lineage attempts) in Parquet and DuckDB. After the next run (whose start
cleans up): the killed run is crashed with no row anywhere (``retrains`` included), no stray
temporary folder or journal entry is left, a version the killed retrain registered without a
lineage line is marked FAILED with a ``failed`` lineage line and CURRENT is back at the version
it was retrained from; the last nightly and a stand-alone retrain complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd

from bench.fault_injection import ROOT, Workspace, whole_or_nothing
from sqflow.bi.duck import run_rows
from sqflow.layout import current_version, registered_versions

N_BATCH = 200
N_REFERENCE = 500  # DriftPolicy.min_reference_rows: fewer is no decision
#: the retrain's kill points in the order a nightly's in-process retrain reaches them
RETRAIN_POINTS = [
    "register-tmp",
    "register-renamed",
    "set-current",
    "reembed-swap",
    "after-retrain",
    "publish-parquet@2",
    "publish-duckdb@2",
    "after-retrain-publish",
]
#: points killed before the retrain wrote its lineage line: recovery records it as failed
BEFORE_LINEAGE = {"register-renamed", "set-current", "reembed-swap"}


class RetrainWorkspace(Workspace):
    """The fault-injection workspace with a rotated (drifting) source and tiny retrains."""

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "source": {
                "kind": "npy",
                "path": str(self.root / "rot.npy"),
                "labels_path": str(self.root / "rot_y.npy"),
            },
            "encoder_epochs": 1,
            "encoder_train_rows": 200,
            "encoder_batch_size": 100,
            "reference_rows": N_REFERENCE,
            "retrain_min_gain": -1.0,
        }

    def prepare(self) -> None:
        """v0001 on upright MNIST test images (200 trained on, 500 reference: the drift
        policy's minimum), the batch: 200 other test images rotated by 90 degrees."""
        from scipy import ndimage

        from flows.settings import flow_settings
        from sqflow.datasets import load_mnist
        from sqflow.pipeline.encoder import train_encoder_stage

        x, y = load_mnist("test")
        n_up = 2 * N_REFERENCE + 200
        np.save(self.root / "x.npy", x[:n_up])
        np.save(self.root / "y.npy", y[:n_up].astype(np.int64))
        rot = ndimage.rotate(x[n_up : n_up + N_BATCH], 90, axes=(1, 2), reshape=False, order=1)
        np.save(self.root / "rot.npy", rot.astype(np.uint8))
        np.save(self.root / "rot_y.npy", y[n_up : n_up + N_BATCH].astype(np.int64))
        upright = {"kind": "npy", "path": str(self.root / "x.npy")}
        upright["labels_path"] = str(self.root / "y.npy")
        cfg = {**self.config(), "source": upright, "output_dir": str(self.root / "train-out")}
        train_encoder_stage(flow_settings(cfg))

    def run_retrain(self, run_id: str, timeout: float = 400) -> int:
        """A stand-alone ``retrain`` flow process for ``run_id``; its exit code."""
        code = (
            "import json, sys; from flows.monitor import retrain_flow; "
            "retrain_flow(run_id=sys.argv[1], reason='kill test: forced', "
            "config=json.loads(sys.argv[2]))"
        )
        with open(self.root / "retrain.log", "wb") as log:
            p = subprocess.run(
                [sys.executable, "-c", code, run_id, json.dumps(self.config())],
                env=self.env(None),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        return p.returncode

    # ----------------------------------------------------------------------- observing
    def lineage(self) -> list[dict[str, Any]]:
        """Every line of models/lineage.jsonl, parsed (fails on a torn or non-JSON line)."""
        p = self.models / "lineage.jsonl"
        if not p.exists():
            return []
        text = p.read_text()
        assert text == "" or text.endswith("\n"), f"torn last line: {text[-200:]!r}"
        return [json.loads(line) for line in text.splitlines()]

    def attempts(self, run_id: str) -> int:
        return sum(r.get("run_id") == run_id for r in self.lineage())

    def retrains_rows(self, run_id: str) -> dict[str, int]:
        files = (self.out / "published" / "retrains").glob(f"run_date=*/{run_id}.parquet")
        return {
            "parquet": int(sum(len(pd.read_parquet(f)) for f in files)),
            "duckdb": run_rows(self.out / "sqflow.duckdb", run_id).get("retrains", 0),
        }

    def assert_registry_consistent(self) -> None:
        for v in registered_versions(self.models):
            have = {
                f
                for f in ("encoder.pt", "model.json", "rows.parquet")
                if (self.models / v / f).exists()
            }
            assert have == {"encoder.pt", "model.json", "rows.parquet"}, (v, have)
        cur = current_version(self.models)  # raises when CURRENT names a folder without encoder
        assert cur in registered_versions(self.models), cur
        self.lineage()


def test_killed_retrains_leave_a_consistent_registry(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    ws = RetrainWorkspace(tmp_path, api_url=PREFECT_API_URL.value())
    ws.prepare()
    previous: dict[str, Any] | None = None
    for point in [*RETRAIN_POINTS, None]:
        current_before = current_version(ws.models)
        versions_before = set(registered_versions(ws.models))
        # the version this run's retrain starts from: the recovery at the run's start puts
        # CURRENT back when the killed run before had made its unrecorded version current
        start_current = current_before
        if previous is not None and previous["point"] in ("set-current", "reembed-swap"):
            start_current = previous["start_current"]
        res = ws.run_nightly(point, timeout=600)
        rid = res["run_id"]
        if point is None:
            assert res["rc"] == 0, res["log_tail"]
        else:
            assert res["killed"], f"{point}: not killed (rc {res['rc']}): {res['log_tail']}"
        assert ws.orphan_processes(wait_s=10) == []
        ws.assert_registry_consistent()
        if previous is not None:  # this run's start cleaned up after the killed one
            kp, krid, kversions = previous["point"], previous["run_id"], previous["versions"]
            rec = ws.run_record(krid)
            assert rec["status"] == "crashed", (kp, rec)
            rows = ws.sink_rows(krid)
            assert {s: whole_or_nothing(r, rec) for s, r in rows.items()} == dict.fromkeys(
                rows, "none"
            ), (kp, rows)
            assert ws.retrains_rows(krid) == {"parquet": 0, "duckdb": 0}, kp
            assert [f for f in ws.stray_files() if rid not in f] == [], kp
            left = sorted(kversions - previous["versions_before"])
            if kp == "register-tmp":
                assert left == [], (kp, left)  # the folder aside was never a version
            if kp in BEFORE_LINEAGE:
                (v,) = left
                assert (ws.models / v / "FAILED.json").exists(), kp
                last = [r for r in ws.lineage() if r.get("to_version") == v]
                assert [r["outcome"] for r in last] == ["failed"], (kp, last)
                assert last[0]["run_id"] == krid and "died" in last[0]["error"]
                # CURRENT was put back: the next retrain started from the version before
                was = previous["start_current"]
                assert last[0]["current_after"] == last[0]["from_version"] == was, last
                mine = [r for r in ws.lineage() if r.get("run_id") == rid]
                assert all(r["from_version"] == was for r in mine), mine
                # the killed run's store is live again, the staging store gone
                krd = ws.out / "runs" / krid
                assert (krd / "embeddings.zarr").is_dir(), kp
                assert not list(krd.glob(".embeddings-*.zarr")), kp
        # this run's retrain: promoted (completed), or killed part-way
        attempts = ws.attempts(rid)
        seen = ws.retrains_rows(rid)
        assert all(n in (0, attempts) for n in seen.values()), (point, seen, attempts)
        if point is None:
            assert ws.run_record(rid)["status"] == "completed"
            assert ws.run_record(rid)["retrain_outcome"] == "promoted"
            assert seen == {"parquet": 1, "duckdb": 1} and attempts == 1
            assert ws.stray_files() == []
        elif point in ("register-tmp", "register-renamed", "set-current", "reembed-swap"):
            assert attempts == 0 and seen == {"parquet": 0, "duckdb": 0}, point
            new = set(registered_versions(ws.models)) - versions_before
            if point == "reembed-swap":  # the window: no live store, the old one aside
                rd = ws.out / "runs" / rid
                assert not (rd / "embeddings.zarr").exists(), point
                assert list(rd.glob("embeddings-*.zarr")), point
            if point in ("set-current", "reembed-swap"):  # CURRENT names the new version
                assert {current_version(ws.models)} == new, (new, current_version(ws.models))
            else:
                assert current_version(ws.models) == start_current, point
            if point == "register-tmp":
                assert set(registered_versions(ws.models)) == versions_before
                tmp = [p.name for p in ws.models.glob(".triplet-v*.tmp")]
                assert len(tmp) == 1, tmp  # left for the next run's recovery
            else:
                assert len(new) == 1, new
        elif point == "publish-duckdb@2":
            # the retrains publish reached Parquet and DuckDB; its journal entry is left
            assert seen == {"parquet": attempts, "duckdb": attempts} and attempts == 1
        previous = {
            "point": point,
            "run_id": rid,
            "versions": set(registered_versions(ws.models)),
            "versions_before": versions_before,
            "start_current": start_current,
        }
        if point is None:
            previous = None
    # a stand-alone retrain of the completed run (the deployment's path) completes too
    last = ws.run_ids()[-1]
    assert ws.run_record(last)["status"] == "completed"
    assert ws.run_retrain(last) == 0, (tmp_path / "retrain.log").read_text()[-3000:]
    ws.assert_registry_consistent()
    assert ws.attempts(last) == 2 and ws.lineage()[-1]["outcome"] == "promoted"
    assert ws.retrains_rows(last) == {"parquet": 2, "duckdb": 2}
    assert ws.stray_files() == []
    assert len(ws.run_ids()) == len(RETRAIN_POINTS) + 1
