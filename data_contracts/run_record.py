"""The record of one nightly run: what the flow built, ``runs/<run_id>/run.json`` holds, and
what publish, the cluster report, the warm start, incremental sampling and the CLI read back.

The record's top level is typed; each stage's result stays the JSON-able dict that stage
returns (its keys are documented by the stage function in ``sqflow.pipeline``). ``run.json`` is
:meth:`RunRecord.to_json`; :meth:`RunRecord.from_json` reads it back, including files written
before the record had a contract (no ``schema_version``: read as version 0, same keys).

This module imports nothing of sqflow (layer rule).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: version of the run.json layout this code writes; files without one are version 0
RUN_RECORD_VERSION = 1

RunStatus = Literal["running", "completed", "failed", "crashed"]

#: what the drift monitor's retrain did in a run: none (no retrain: no drift, no decision,
#: disabled, or the monitor did not run), promoted (new version made current), refused (trained
#: but not better on held-out data: the old version stays), failed (error; old version stays)
RetrainOutcome = Literal["none", "requested", "promoted", "refused", "failed"]
RETRAIN_OUTCOMES: tuple[str, ...] = ("none", "requested", "promoted", "refused", "failed")

#: stage fields of the record and the name each one's seconds get in ``timings``
STAGE_TIMING_NAMES: dict[str, str] = {
    "sample": "sample",
    "train": "train-encoder",
    "embed": "embed",
    "monitor": "monitor",
    "cluster": "cluster",
    "plots": "plots",
    "report": "report",
    "publish": "publish",
}


class RunRecordError(ValueError):
    """A run.json that is not a run record (names the file and what is wrong)."""


class RunRecord(BaseModel):
    """One nightly run. Stage fields hold the stage's returned dict (None: not reached); the
    monitor and the report hold ``{"error", "seconds"}`` when they failed (not fatal). Older
    records may hold a note string in ``monitor`` (the monitor did not exist yet)."""

    # unknown keys of older or newer files are kept, not refused: a reader never loses data
    model_config = ConfigDict(extra="allow")

    schema_version: int = Field(RUN_RECORD_VERSION, ge=0)
    run_id: str
    flow_run_id: str | None = None
    started_at: str = Field(description="ISO 8601 UTC time the flow started.")
    finished_at: str | None = None
    status: RunStatus = "running"
    dataset: str | None = None
    encoder_version: str | None = None
    n_clusters: int | None = Field(
        None, description="K of the run; None while n_clusters='auto' has not chosen yet."
    )
    waited_for_lock_s: float | None = Field(None, description="Seconds spent waiting for the lock.")
    retrain_outcome: RetrainOutcome | None = Field(
        None, description="What the retrain did (None: the monitor stage was not reached)."
    )
    new_encoder_version: str | None = Field(
        None, description="Version the retrain trained (promoted or refused), else None."
    )
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")
    outputs: dict[str, str] = Field(default_factory=dict, description="Name -> path.")
    sample: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    embed: dict[str, Any] | None = None
    monitor: dict[str, Any] | str | None = None
    cluster: dict[str, Any] | None = None
    plots: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    publish: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    degraded_reasons: list[str] = Field(
        default_factory=list,
        description=(
            "Why a completed run is degraded (monitor, retrain or report failed; the clusters "
            "were still published). Empty: a clean run."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _version(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            version = data.get("schema_version")
            if isinstance(version, int) and version > RUN_RECORD_VERSION:
                raise ValueError(
                    f"schema_version {data['schema_version']} is newer than this code reads "
                    f"(<= {RUN_RECORD_VERSION}): update sqflow"
                )
            if data.get("cluster") == {}:  # failed runs of version 0 wrote an empty dict
                data["cluster"] = None
            if data.get("n_clusters") == "auto":  # the setting: K is known after the cluster stage
                data["n_clusters"] = None
        return data

    # ------------------------------------------------------------------ building
    def add_stage(self, stage: str, result: dict[str, Any]) -> dict[str, Any]:
        """Store a stage's result and its ``seconds`` in ``timings``; returns ``result``."""
        if stage not in STAGE_TIMING_NAMES:
            raise ValueError(f"unknown stage {stage!r}; valid: {sorted(STAGE_TIMING_NAMES)}")
        setattr(self, stage, result)
        if stage == "cluster" and result.get("n_clusters") is not None:
            self.n_clusters = int(result["n_clusters"])  # the K used (chosen, for "auto")
        self.timings[STAGE_TIMING_NAMES[stage]] = float(result["seconds"])
        return result

    def record_retrain(self, monitor: dict[str, Any]) -> None:
        """Set ``retrain_outcome`` / ``new_encoder_version`` from the monitor stage's result
        (its ``retrain`` dict carries ``outcome``; a failed monitor means no retrain ran)."""
        r = monitor.get("retrain") if isinstance(monitor, dict) else None
        outcome = (r or {}).get("outcome") or (
            # asked for, not finished when this run published: a deployment trigger runs it
            # (its outcome is in models/lineage.jsonl and the retrain artifact) or it runs in
            # process after publish (run.json then holds the final outcome)
            "requested" if (r or {}).get("status") in ("requested", "pending") else "none"
        )
        if outcome not in RETRAIN_OUTCOMES:
            raise ValueError(f"retrain outcome {outcome!r}; valid: {list(RETRAIN_OUTCOMES)}")
        self.retrain_outcome = outcome
        self.new_encoder_version = (r or {}).get("new_version") if outcome != "none" else None

    # ------------------------------------------------------------------ reading
    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def outcome(self) -> str:
        """``ok``, ``degraded`` (completed, but ``degraded_reasons``), ``failed`` or
        ``running``: what the Prefect state's name and the summary say."""
        if self.status == "completed":
            return "degraded" if self.degraded_reasons else "ok"
        return self.status

    @property
    def clusters(self) -> list[dict[str, Any]]:
        """Per-cluster rows of the cluster stage (empty when it was not reached)."""
        return list((self.cluster or {}).get("clusters") or [])

    def stage_error(self, stage: str) -> str | None:
        """The error of a non-fatal stage (monitor, report) that failed, else None."""
        got = getattr(self, stage, None)
        return got.get("error") if isinstance(got, dict) else None

    # ------------------------------------------------------------------ run.json
    def to_json(self) -> str:
        """``run.json``: the record without the cluster stage's full ``loss_curve`` (the
        passes' objective estimates stay); values that are not JSON become strings."""
        data = self.model_dump()
        if isinstance(data.get("cluster"), dict):
            data["cluster"] = {k: v for k, v in data["cluster"].items() if k != "loss_curve"}
        return json.dumps(data, indent=2, default=str)

    @classmethod
    def from_json(cls, text: str, where: str = "run.json") -> RunRecord:
        """Parse a ``run.json`` text; :class:`RunRecordError` names ``where`` when it is not a
        run record."""
        try:
            data = json.loads(text)
            if isinstance(data, dict):  # written before the record had a contract: version 0
                data.setdefault("schema_version", 0)
            return cls.model_validate(data)
        except ValueError as exc:
            raise RunRecordError(f"{where} is not a run record: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunRecord:
        """Read ``path`` (a ``run.json``)."""
        return cls.from_json(Path(path).read_text(), str(path))
