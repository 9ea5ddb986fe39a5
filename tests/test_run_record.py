"""The run record contract (data_contracts/run_record.py) and the typed settings
(data_contracts/settings.py, loaded by flows/settings.py)."""

from __future__ import annotations

import json

import pytest

from data_contracts.run_record import RUN_RECORD_VERSION, RunRecord, RunRecordError
from data_contracts.settings import PipelineSettings


def _record() -> RunRecord:
    rec = RunRecord(run_id="20261130T020000Z-00000001", started_at="2026-11-30T02:00:00+00:00")
    rec.add_stage("sample", {"dataset": "mnist-all", "n_selected": 5, "seconds": 1.5})
    rec.add_stage("train", {"version": "triplet-v0001", "seconds": 2.0})
    rec.add_stage(
        "cluster",
        {
            "objective": 0.5,
            "loss_curve": [3.0, 2.0, 1.0],
            "clusters": [{"cluster_id": 0}],
            "seconds": 4,
        },
    )
    return rec


def test_stages_fill_the_record_and_its_timings():
    rec = _record()
    assert rec.timings == {"sample": 1.5, "train-encoder": 2.0, "cluster": 4.0}
    assert rec.sample["n_selected"] == 5 and rec.clusters == [{"cluster_id": 0}]
    with pytest.raises(ValueError, match="unknown stage 'clustr'"):
        rec.add_stage("clustr", {"seconds": 1})


def test_run_json_round_trip_drops_only_the_full_curve(tmp_path):
    rec = _record()
    rec.status = "completed"
    path = tmp_path / "run.json"
    path.write_text(rec.to_json())
    data = json.loads(path.read_text())
    assert data["schema_version"] == RUN_RECORD_VERSION
    assert "loss_curve" not in data["cluster"] and data["cluster"]["objective"] == 0.5
    back = RunRecord.load(path)
    assert (
        back.completed
        and back.timings == rec.timings
        and back.cluster["clusters"] == [{"cluster_id": 0}]
    )


def test_old_run_json_without_a_version_still_reads():
    """run.json files written before the contract: no schema_version, a note string as monitor,
    an empty cluster dict for a failed run, keys this code does not know."""
    old = {
        "run_id": "20261120T020000Z-00000001",
        "started_at": "2026-11-20T02:00:00+00:00",
        "status": "failed",
        "monitor": "not run: drift monitoring is not implemented yet",
        "cluster": {},
        "timings": {"sample": 1},
        "some_later_key": [1, 2],
    }
    rec = RunRecord.from_json(json.dumps(old))
    assert rec.schema_version == 0 and rec.cluster is None and rec.clusters == []
    assert rec.monitor.startswith("not run") and rec.stage_error("monitor") is None
    assert rec.model_dump()["some_later_key"] == [1, 2]  # kept, not lost


def test_bad_run_json_names_the_file_and_the_field():
    with pytest.raises(RunRecordError, match=r"(?s)runs/x/run.json.*status"):
        RunRecord.from_json(
            json.dumps({"run_id": "x", "started_at": "t", "status": "exploded"}), "runs/x/run.json"
        )
    with pytest.raises(RunRecordError, match="schema_version 99 is newer"):
        RunRecord.from_json(json.dumps({"run_id": "x", "started_at": "t", "schema_version": 99}))


def test_flow_settings_are_typed_plain_and_absolute(tmp_path, monkeypatch):
    from flows.settings import SqflowSettings, flow_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SQFLOW_STORE_CHUNK_ROWS", "1024")
    s = flow_settings({"output_dir": "out", "n_clusters": 4})
    assert type(s) is PipelineSettings and not isinstance(s, SqflowSettings)
    assert s.output_dir == tmp_path / "out" and s.n_clusters == 4 and s.store_chunk_rows == 1024
    assert s.embed_batch_size == 4096  # the default, stated once (data_contracts/settings.py)
    assert "cron" not in s.flow_parameters() and s.flow_parameters()["n_clusters"] == 4
    with pytest.raises(ValueError, match="n_clusters"):
        flow_settings({"n_clusters": 0})
    with pytest.raises(ValueError, match="n_clustrs"):
        flow_settings({"n_clustrs": 3})
