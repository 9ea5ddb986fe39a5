"""Contracts of the BI tables published by every nightly run (Parquet, DuckDB, PostgreSQL).

One definition per table (:data:`TABLES`): the columns with an explicit logical type, whether
null is allowed, value checks and a description, plus the table's ``CONTRACT_VERSION``. From it
come, with nothing typed twice:

* the pandera schema that every frame is validated against before any write
  (:meth:`TableContract.pandera_schema`, :func:`validate_frame`);
* the Arrow schema of the Parquet files (:meth:`TableContract.arrow_schema`), so Parquet and
  DuckDB types never depend on what pandas inferred for one run (pandas 3 makes text ``str``,
  an all-null column ``object``, ...);
* the SQL column types for DuckDB and PostgreSQL (:meth:`TableContract.sql_columns`);
* the JSON Schema of one row, committed in ``data_contracts/schemas/<table>.schema.json``.

Versions: each table has its own ``version`` (a string of an integer). A breaking change
(a column removed, renamed, retyped, or made nullable/non-nullable the wrong way for readers)
bumps it; adding a nullable column is not breaking. The version is written into every table's
metadata: the Parquet key-value metadata (key ``sqflow.contract``), and a ``sqflow_contracts``
table plus a ``COMMENT ON TABLE`` in DuckDB and PostgreSQL. Sinks refuse to write into a
database table recorded with another version of its contract.

This module imports nothing of sqflow (layer rule: ``data_contracts`` depends on third-party
packages only). Regenerate the committed JSON Schemas after any change with::

    sqflow schemas            # writes data_contracts/schemas/<table>.schema.json
    sqflow schemas --check    # exits 1 if the committed files are stale
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

#: Logical column types. Each maps to one pandas dtype, one Arrow type and one SQL type per
#: database (see ``_TYPES``).
ColumnType = Literal[
    "str", "int32", "int64", "float32", "float64", "bool", "timestamp", "json", "list_float64"
]

# logical type -> (pandas dtype when non-nullable, pandas dtype when nullable, Arrow type,
#                  DuckDB type, PostgreSQL type, JSON Schema fragment)
_TYPES: dict[str, tuple[str, str, pyarrow.DataType, str, str, dict[str, Any]]] = {
    "str": ("str", "str", pyarrow.string(), "VARCHAR", "TEXT", {"type": "string"}),
    "int32": (
        "int32",
        "Int32",
        pyarrow.int32(),
        "INTEGER",
        "INTEGER",
        {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
    ),
    "int64": ("int64", "Int64", pyarrow.int64(), "BIGINT", "BIGINT", {"type": "integer"}),
    "float32": ("float32", "float32", pyarrow.float32(), "FLOAT", "REAL", {"type": "number"}),
    "float64": (
        "float64",
        "float64",
        pyarrow.float64(),
        "DOUBLE",
        "DOUBLE PRECISION",
        {"type": "number"},
    ),
    "bool": ("bool", "boolean", pyarrow.bool_(), "BOOLEAN", "BOOLEAN", {"type": "boolean"}),
    "timestamp": (
        "datetime64[us, UTC]",
        "datetime64[us, UTC]",
        pyarrow.timestamp("us", tz="UTC"),
        "TIMESTAMPTZ",
        "TIMESTAMPTZ",
        {"type": "string", "format": "date-time"},
    ),
    "json": (
        "str",
        "str",
        pyarrow.string(),
        "JSON",
        "JSONB",
        {"type": "string", "contentMediaType": "application/json"},
    ),
    "list_float64": (
        "object",
        "object",
        pyarrow.list_(pyarrow.float64()),
        "DOUBLE[]",
        "DOUBLE PRECISION[]",
        {"type": "array", "items": {"type": "number"}},
    ),
}


class ContractViolation(ValueError):
    """A frame violates its table's contract. The message names the table, the column(s) and
    the offending rows (index labels); ``failures`` holds them as records."""

    def __init__(self, table: str, message: str, failures: list[dict[str, Any]] | None = None):
        self.table = table
        self.failures = failures or []
        super().__init__(f"table {table!r}: {message}")


@dataclass(frozen=True)
class Col:
    """One column of a table contract."""

    name: str
    type: ColumnType
    description: str
    nullable: bool = False
    checks: tuple[pa.Check, ...] = ()
    #: JSON Schema keywords that mirror ``checks`` (minimum, enum, ...).
    json_extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pandas_dtype(self) -> str:
        t = _TYPES[self.type]
        return t[1] if self.nullable else t[0]

    @property
    def arrow_type(self) -> pyarrow.DataType:
        return _TYPES[self.type][2]


@dataclass(frozen=True)
class TableContract:
    """Contract of one BI table. ``key`` columns are unique together within the table."""

    name: str
    version: str
    description: str
    columns: tuple[Col, ...]
    key: tuple[str, ...]
    frame_checks: tuple[Callable[[pd.DataFrame], list[dict[str, Any]]], ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Col:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}; valid: {self.column_names}")

    # ------------------------------------------------------------------ derived schemas
    def pandera_schema(self) -> pa.DataFrameSchema:
        cols = {
            c.name: pa.Column(
                c.pandas_dtype,
                nullable=c.nullable,
                checks=list(c.checks),
                description=c.description,
            )
            for c in self.columns
        }
        return pa.DataFrameSchema(
            cols,
            name=self.name,
            strict=True,
            ordered=False,
            unique=list(self.key) if self.key else None,
            report_duplicates="all",
            metadata={"contract_version": self.version},
        )

    def metadata(self) -> dict[str, Any]:
        """What is recorded next to the data (Parquet key-value metadata, sqflow_contracts)."""
        return {
            "table": self.name,
            "contract_version": self.version,
            "columns": {c.name: {"type": c.type, "nullable": c.nullable} for c in self.columns},
        }

    def arrow_schema(self) -> pyarrow.Schema:
        fields = [
            pyarrow.field(
                c.name,
                c.arrow_type,
                nullable=c.nullable,
                metadata={
                    "description": c.description,
                    **({"sqflow.type": "json"} if c.type == "json" else {}),
                },
            )
            for c in self.columns
        ]
        return pyarrow.schema(
            fields, metadata={"sqflow.contract": json.dumps(self.metadata(), sort_keys=True)}
        )

    def sql_columns(self, dialect: Literal["duckdb", "postgresql"]) -> list[tuple[str, str, bool]]:
        """(name, SQL type, nullable) for each column."""
        i = 3 if dialect == "duckdb" else 4
        return [(c.name, _TYPES[c.type][i], c.nullable) for c in self.columns]

    def added_columns(self, have: list[str], dialect: str) -> list[tuple[str, str]]:
        """(name, SQL type) of the nullable columns a database table with columns ``have``
        lacks at its end: the additive (non-breaking) change ``ALTER TABLE ADD COLUMN`` can
        apply in place. Empty when ``have`` is not such a prefix of this contract's columns."""
        names = self.column_names
        if len(have) >= len(names) or have != names[: len(have)]:
            return []
        rest = self.sql_columns(dialect)[len(have) :]
        if not all(nullable for _, _, nullable in rest):
            return []
        return [(n, t) for n, t, _ in rest]

    def json_schema(self) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for c in self.columns:
            p = {
                **_TYPES[c.type][5],
                **c.json_extra,
                "description": c.description,
                "x-sqflow-type": c.type,
            }
            if c.nullable:
                p["type"] = [p["type"], "null"]
            props[c.name] = p
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://sqflow.invalid/contracts/{self.name}.schema.json",
            "title": self.name,
            "description": self.description + " One object = one row.",
            "type": "object",
            "properties": props,
            "required": self.column_names,
            "additionalProperties": False,
            "x-sqflow-contract-version": self.version,
            "x-sqflow-key": list(self.key),
        }


# ------------------------------------------------------------------------ frame-level checks
def _one_center_dim(df: pd.DataFrame) -> list[dict[str, Any]]:
    """All centers of one run have the same dimension."""
    out = []
    for _run_id, g in df.groupby("run_id", sort=False):
        lens = g["center"].map(len)
        if lens.nunique() > 1:
            dim = int(lens.mode().iloc[0])
            out += [
                {"column": "center", "index": i, "failure_case": f"length {n} != {dim}"}
                for i, n in lens[lens != dim].items()
            ]
    return out


# ------------------------------------------------------------------------------- checks
def _non_empty() -> pa.Check:
    return pa.Check.str_length(min_value=1)


def _valid_json(s: pd.Series) -> pd.Series:
    def ok(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        try:
            json.loads(v)
        except ValueError:
            return False
        return True

    return s.map(ok)


def _finite_list(s: pd.Series) -> pd.Series:
    def ok(v: Any) -> bool:
        if not isinstance(v, (list, tuple, np.ndarray)) or len(v) == 0:
            return False
        try:
            return all(
                isinstance(x, (int, float, np.integer, np.floating))
                and not isinstance(x, bool)
                and math.isfinite(float(x))
                for x in v
            )
        except TypeError:
            return False

    return s.map(ok)


def _json_array(s: pd.Series) -> pd.Series:
    def ok(v: Any) -> bool:
        try:
            return isinstance(v, str) and isinstance(json.loads(v), list)
        except ValueError:
            return False

    return s.map(ok)


_RUN_ID = Col(
    "run_id",
    "str",
    "Id of the nightly run (YYYYMMDDTHHMMSSZ-xxxxxxxx); in every row.",
    checks=(_non_empty(),),
    json_extra={"minLength": 1},
)
_GE0 = pa.Check.ge(0)
_FINITE = pa.Check(lambda s: np.isfinite(s.astype("float64")), element_wise=False, name="finite")

RUNS = TableContract(
    name="runs",
    version="1",
    description="One row per nightly run: what ran, on what, and the headline numbers.",
    key=("run_id",),
    columns=(
        _RUN_ID,
        Col(
            "flow_run_id",
            "str",
            "Prefect flow run id (null when run without Prefect).",
            nullable=True,
        ),
        Col(
            "started_at",
            "timestamp",
            "When the run started (UTC). Its date is the Parquet partition run_date.",
        ),
        Col(
            "finished_at",
            "timestamp",
            "When the run finished (UTC); null while running.",
            nullable=True,
        ),
        Col(
            "status",
            "str",
            "completed, failed or running.",
            checks=(pa.Check.isin(["completed", "failed", "running"]),),
            json_extra={"enum": ["completed", "failed", "running"]},
        ),
        Col(
            "dataset",
            "str",
            "Dataset name, e.g. mnist-all.",
            checks=(_non_empty(),),
            json_extra={"minLength": 1},
        ),
        Col(
            "encoder_version",
            "str",
            "Registered encoder version used to embed, e.g. "
            "triplet-v0001 (null if the run failed before embedding).",
            nullable=True,
        ),
        Col(
            "n_samples",
            "int64",
            "Items in the run (manifest rows).",
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "n_quarantined",
            "int64",
            "Items refused by the sample checks.",
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "n_clusters",
            "int32",
            "Number of clusters k.",
            checks=(pa.Check.ge(1),),
            json_extra={"minimum": 1},
        ),
        Col(
            "objective",
            "float64",
            "SQ objective: mean over items of min_k ||z - y_k||^r "
            "(null if the run failed before clustering).",
            nullable=True,
            checks=(pa.Check.ge(0),),
            json_extra={"minimum": 0},
        ),
        Col("monitor_ran", "bool", "Whether the drift monitor ran in this run."),
        Col(
            "drift_detected",
            "bool",
            "Drift decision of the monitor; null when the monitor "
            "did not run (never a stand-in value).",
            nullable=True,
        ),
        Col(
            "config",
            "json",
            "The run's configuration as a JSON object (no secrets).",
            checks=(pa.Check(_valid_json, element_wise=False, name="valid_json"),),
        ),
        Col(
            "retrain_outcome",
            "str",
            "What the drift monitor's retrain did: none (no retrain), requested (asked for, "
            "not finished when the run published: see models/lineage.jsonl), promoted (new encoder "
            "made current), refused (trained, not better on held-out data: old one kept), "
            "failed (error: old one kept). Null for runs published before this column.",
            nullable=True,
            checks=(pa.Check.isin(["none", "requested", "promoted", "refused", "failed"]),),
            json_extra={"enum": ["none", "requested", "promoted", "refused", "failed", None]},
        ),
        Col(
            "new_encoder_version",
            "str",
            "Encoder version the retrain trained (promoted or refused; failed when it got "
            "that far); null without a retrain.",
            nullable=True,
        ),
        Col(
            "degraded_reasons",
            "json",
            "JSON array of why the completed run is Degraded (its monitor or report failed, or "
            "a retrain that finished before publish failed; the clusters were still "
            "published), as known when the run published; [] for a clean run. A retrain "
            "that ends after publish is in the retrains table. Null for runs published "
            "before this column.",
            nullable=True,
            checks=(pa.Check(_json_array, element_wise=False, name="json_array"),),
        ),
    ),
)

CLUSTER_CENTERS = TableContract(
    name="cluster_centers",
    version="1",
    description="One row per cluster of a run: its center in the embedding space and its size.",
    key=("run_id", "cluster_id"),
    frame_checks=(_one_center_dim,),
    columns=(
        _RUN_ID,
        Col(
            "cluster_id",
            "int32",
            "Cluster index 0..k-1.",
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "center",
            "list_float64",
            "Center coordinates (one float per embedding dimension).",
            checks=(pa.Check(_finite_list, element_wise=False, name="finite_non_empty_list"),),
            json_extra={"minItems": 1},
        ),
        Col(
            "size",
            "int64",
            "Items assigned to the cluster.",
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "mean_distance",
            "float64",
            "Mean Euclidean distance of its items to the center; null for an empty cluster.",
            nullable=True,
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "majority_label",
            "int64",
            "Most frequent known label among its items; null when none of them is labeled.",
            nullable=True,
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "label_purity",
            "float64",
            "Share of its labeled items that carry the majority label; null when none is labeled.",
            nullable=True,
            checks=(pa.Check.in_range(0.0, 1.0),),
            json_extra={"minimum": 0, "maximum": 1},
        ),
    ),
)

ASSIGNMENTS = TableContract(
    name="assignments",
    version="1",
    description="One row per item of a run: the cluster it was assigned to and how far it is.",
    key=("run_id", "sample_id"),
    columns=(
        _RUN_ID,
        Col(
            "sample_id",
            "str",
            "Id of the item (unique within a run).",
            checks=(_non_empty(),),
            json_extra={"minLength": 1},
        ),
        Col(
            "cluster_id",
            "int32",
            "Assigned cluster (nearest center).",
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "distance",
            "float64",
            "Euclidean distance to the assigned center.",
            checks=(_GE0, _FINITE),
            json_extra={"minimum": 0},
        ),
        Col(
            "label",
            "int64",
            "Known label; null for unlabeled items.",
            nullable=True,
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "encoder_version",
            "str",
            "Embedding (encoder) version the item was embedded with.",
            checks=(_non_empty(),),
            json_extra={"minLength": 1},
        ),
    ),
)

DRIFT_REPORTS = TableContract(
    name="drift_reports",
    version="1",
    description="One row per drift statistic of a run (new embeddings vs the reference set), "
    "plus one 'decision' row (value = statistics flagging drift, threshold = how "
    "many must agree).",
    key=("run_id", "statistic"),
    columns=(
        _RUN_ID,
        Col(
            "reference_version",
            "str",
            "Encoder version whose reference set was compared to.",
            checks=(_non_empty(),),
            json_extra={"minLength": 1},
        ),
        Col(
            "statistic",
            "str",
            "mmd, ks, distortion, occupancy, or decision.",
            checks=(_non_empty(),),
            json_extra={"minLength": 1},
        ),
        Col("value", "float64", "Value of the statistic (not NaN; may be infinite)."),
        Col("threshold", "float64", "Bound the statistic is compared with (alpha for tests)."),
        Col(
            "p_value",
            "float64",
            "p-value when the test has one, else null.",
            nullable=True,
            checks=(pa.Check.in_range(0.0, 1.0),),
            json_extra={"minimum": 0, "maximum": 1},
        ),
        Col(
            "drifted",
            "bool",
            "Whether this statistic (or the decision) signals drift; null "
            "when the data were insufficient for a decision.",
            nullable=True,
        ),
        Col(
            "status",
            "str",
            "Outcome of the check, e.g. ok or insufficient_data.",
            checks=(_non_empty(),),
            json_extra={"minLength": 1},
        ),
        Col(
            "batch_rows",
            "int64",
            "Rows of the run's embeddings that were checked.",
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "reference_rows",
            "int64",
            "Rows of the reference set used.",
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col("created_at", "timestamp", "When the report was computed (UTC)."),
    ),
)

QUARANTINE = TableContract(
    name="quarantine",
    version="1",
    description="One row per source item the sample stage refused, with the reason.",
    key=(),
    columns=(
        _RUN_ID,
        Col(
            "sample_ref",
            "str",
            "Where the item lives in the source.",
            checks=(_non_empty(),),
            json_extra={"minLength": 1},
        ),
        Col(
            "reason",
            "str",
            "Why it was refused (human readable).",
            checks=(_non_empty(),),
            json_extra={"minLength": 1},
        ),
        Col("detected_at", "timestamp", "When it was refused (UTC)."),
    ),
)


_SHARE = pa.Check.in_range(0.0, 1.0)


def _share(name: str, text: str) -> Col:
    return Col(
        name,
        "float64",
        text,
        nullable=True,
        checks=(_SHARE,),
        json_extra={"minimum": 0, "maximum": 1},
    )


CLUSTER_REPORT = TableContract(
    name="cluster_report",
    version="1",
    description="One row per cluster of a run: the figures of the cluster report (size, label "
    "purity, spread) and the run's embedding quality on the labeled hold-out.",
    key=("run_id", "cluster_id"),
    columns=(
        _RUN_ID,
        Col(
            "cluster_id",
            "int32",
            "Cluster index 0..k-1.",
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "size",
            "int64",
            "Items assigned to the cluster.",
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col(
            "majority_label",
            "int64",
            "Most frequent known label of its items; null when none is labeled.",
            nullable=True,
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        _share("purity", "Share of its labeled items carrying the majority label."),
        Col(
            "mean_distance",
            "float64",
            "Mean Euclidean distance of its items to the center; null for an empty cluster.",
            nullable=True,
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        _share(
            "knn_accuracy",
            "Run-level: leave-one-out kNN accuracy of the labeled hold-out "
            "in the embedding (same on every row of the run).",
        ),
        _share(
            "majority_agreement",
            "Run-level: share of held-out labeled items whose "
            "cluster's majority label is their own.",
        ),
        _share(
            "trustworthiness",
            "Run-level: scikit-learn trustworthiness of the embedding of "
            "the hold-out (input neighbours kept).",
        ),
        Col(
            "representative_sample_ids",
            "json",
            "JSON array of the sample ids nearest to the "
            "center (the cluster's typical members), nearest first.",
            checks=(pa.Check(_json_array, element_wise=False, name="json_array"),),
        ),
    ),
)

_RETRAIN_OUTCOMES = ["promoted", "refused", "failed", "skipped"]

RETRAINS = TableContract(
    name="retrains",
    version="1",
    description="One row per retrain attempt of the encoder after drift: the run that asked "
    "for it, the versions, the outcome, the promotion gate's scores, when. Written by the "
    "retrain flow when the attempt ends (the runs row of the requesting run only says "
    "requested when the retrain ran after it published).",
    key=("run_id", "attempt"),
    columns=(
        Col(
            "run_id",
            "str",
            "Id of the nightly run whose drift requested the retrain (its runs row).",
            checks=(_non_empty(),),
            json_extra={"minLength": 1},
        ),
        Col(
            "attempt",
            "int32",
            "1, 2, ...: the order of this run's retrain attempts in models/lineage.jsonl.",
            checks=(pa.Check.ge(1),),
            json_extra={"minimum": 1},
        ),
        Col(
            "dataset",
            "str",
            "Dataset name, e.g. mnist-all.",
            checks=(_non_empty(),),
            json_extra={"minLength": 1},
        ),
        Col(
            "from_version",
            "str",
            "Encoder version that drifted (current when the retrain started); null when none "
            "was registered.",
            nullable=True,
        ),
        Col(
            "to_version",
            "str",
            "Encoder version the retrain trained; null when it failed before registering one.",
            nullable=True,
        ),
        Col(
            "outcome",
            "str",
            "promoted (new version made current), refused (not better on held-out rows: old "
            "one kept), failed (error: old one kept), skipped (another version was already "
            "current when the attempt started, e.g. an earlier retrain of the same drift: "
            "nothing trained).",
            checks=(pa.Check.isin(_RETRAIN_OUTCOMES),),
            json_extra={"enum": _RETRAIN_OUTCOMES},
        ),
        Col(
            "current_after",
            "str",
            "Encoder version current when the attempt ended.",
            nullable=True,
        ),
        Col(
            "reason",
            "str",
            "Why it was retrained (the drift statistics that flagged).",
            nullable=True,
        ),
        Col("error", "str", "The error of a failed attempt; null otherwise.", nullable=True),
        Col(
            "gate_criterion",
            "str",
            "Promotion gate criterion, e.g. heldout_knn5_accuracy or "
            "heldout_1_minus_normalised_sq_objective; null when the gate was not reached.",
            nullable=True,
        ),
        Col(
            "gate_old_score",
            "float64",
            "Gate score of from_version on the held-out rows (higher is better).",
            nullable=True,
        ),
        Col(
            "gate_new_score",
            "float64",
            "Gate score of to_version on the same rows (higher is better).",
            nullable=True,
        ),
        Col(
            "gate_min_gain",
            "float64",
            "Margin the new score had to beat the old one by (retrain_min_gain).",
            nullable=True,
        ),
        Col(
            "gate_rows",
            "int64",
            "Held-out rows the gate scored.",
            nullable=True,
            checks=(_GE0,),
            json_extra={"minimum": 0},
        ),
        Col("started_at", "timestamp", "When the attempt started (UTC)."),
        Col("finished_at", "timestamp", "When the attempt ended (UTC)."),
    ),
)

#: Every published table by name. A new table is added here with its own contract; sinks,
#: JSON Schema export and tests pick it up from this registry.
TABLES: dict[str, TableContract] = {
    t.name: t
    for t in (
        RUNS,
        CLUSTER_CENTERS,
        ASSIGNMENTS,
        DRIFT_REPORTS,
        QUARANTINE,
        CLUSTER_REPORT,
        RETRAINS,
    )
}

#: Version of each table's contract, e.g. ``CONTRACT_VERSION["runs"] == "1"``.
CONTRACT_VERSION: dict[str, str] = {name: t.version for name, t in TABLES.items()}


def get_contract(table: str) -> TableContract:
    try:
        return TABLES[table]
    except KeyError:
        raise ContractViolation(table, f"no such table; valid: {sorted(TABLES)}") from None


# ------------------------------------------------------------------------------ conform
def _bad_rows(mask: pd.Series, limit: int = 10) -> list[Any]:
    return [i for i in mask.index[mask.to_numpy(dtype=bool)][:limit]]


def _conform_column(table: str, col: Col, s: pd.Series) -> pd.Series:
    """Cast ``s`` to the column's canonical pandas dtype when that loses nothing, else raise
    :class:`ContractViolation` naming the column and the rows that do not fit."""
    want = col.pandas_dtype
    if str(s.dtype) == want and col.type not in ("list_float64", "json"):
        return s

    def fail(what: str, mask: pd.Series | None = None) -> ContractViolation:
        rows = _bad_rows(mask) if mask is not None else []
        extra = f" in rows {rows}" if rows else ""
        return ContractViolation(
            table,
            f"column {col.name!r} ({col.type}{', nullable' if col.nullable else ''}): "
            f"{what}{extra}",
            [{"column": col.name, "index": i, "failure_case": s.loc[i]} for i in rows],
        )

    na = s.isna() if col.type != "list_float64" else s.map(lambda v: v is None or v is pd.NA)
    if not col.nullable and na.any():  # before any cast could turn a null into a value
        raise fail("null values in a non-nullable column", na)
    t = col.type
    if t in ("str", "json"):
        vals = s
        if t == "json":
            vals = s.map(
                lambda v: (
                    v
                    if (
                        v is None
                        or v is pd.NA
                        or isinstance(v, str)
                        or (isinstance(v, float) and math.isnan(v))
                    )
                    else json.dumps(v, sort_keys=True, default=str)
                )
            )
        bad = ~na & ~vals.map(lambda v: isinstance(v, str))
        if bad.any():
            raise fail(f"values must be text, got {s[bad].map(type).iloc[0].__name__}", bad)
        return vals.astype("str")
    if t in ("int32", "int64"):
        if pd.api.types.is_bool_dtype(s) or not (
            pd.api.types.is_integer_dtype(s) or pd.api.types.is_float_dtype(s) or s.dtype == object
        ):
            raise fail(f"dtype {s.dtype} is not an integer type")
        num = pd.to_numeric(s, errors="coerce")
        bad = ~na & (num.isna() | (num != np.floor(num.astype("float64"))))
        if bad.any():
            raise fail("values are not integers", bad)
        info = np.iinfo(t)
        bad = ~na & ((num < info.min) | (num > info.max))
        if bad.any():
            raise fail(f"values outside the {t} range", bad)
        return num.astype(want)
    if t in ("float32", "float64"):
        if pd.api.types.is_bool_dtype(s) or not (
            pd.api.types.is_numeric_dtype(s) or s.dtype == object
        ):
            raise fail(f"dtype {s.dtype} is not numeric")
        num = pd.to_numeric(s, errors="coerce")
        bad = ~na & num.isna()
        if bad.any():
            raise fail("values are not numbers", bad)
        return num.astype("Float64").astype(want)  # pd.NA and NaN both become NaN (null)
    if t == "bool":
        ok = s.map(
            lambda v: (
                v is None
                or v is pd.NA
                or isinstance(v, (bool, np.bool_))
                or (isinstance(v, float) and math.isnan(v))
            )
        )
        if not ok.all():
            raise fail("values must be true/false", ~ok)
        return s.astype(want)
    if t == "timestamp":
        if not isinstance(s.dtype, pd.DatetimeTZDtype):
            if pd.api.types.is_datetime64_dtype(s):
                raise fail(
                    f"dtype {s.dtype} has no time zone; give UTC timestamps "
                    "(e.g. Series.dt.tz_localize('UTC'))"
                )
            try:
                s = pd.to_datetime(s, utc=True, format="ISO8601")
            except (ValueError, TypeError) as exc:
                raise fail(f"values are not ISO 8601 timestamps ({exc})") from None
        return s.dt.tz_convert("UTC").astype(want)
    if t == "list_float64":
        return s.map(
            lambda v: (
                v
                if (v is None or v is pd.NA)
                else (
                    list(map(float, v))
                    if isinstance(v, (list, tuple, np.ndarray))
                    and all(
                        isinstance(x, (int, float, np.integer, np.floating))
                        and not isinstance(x, bool)
                        for x in v
                    )
                    else v
                )
            )
        ).astype(object)
    raise AssertionError(t)


def validate_frame(table: str, df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` conformed to ``table``'s contract (columns in contract order, canonical
    dtypes, a fresh RangeIndex), or raise :class:`ContractViolation` naming the table, the
    column(s) and the rows (labels of ``df``'s index) that violate it. Nothing is modified in
    place. Lossless casts are applied (int32 -> int64, float32 -> float64, object text -> str,
    ISO strings -> UTC timestamps, JSON objects -> JSON text); anything lossy is an error."""
    contract = get_contract(table)
    if not isinstance(df, pd.DataFrame):
        raise ContractViolation(table, f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in contract.column_names if c not in df.columns]
    extra = [c for c in df.columns if c not in contract.column_names]
    if missing or extra:
        raise ContractViolation(
            table, f"columns missing {missing}, unexpected {extra}; valid: {contract.column_names}"
        )
    if df.columns.duplicated().any():
        raise ContractViolation(
            table, f"duplicate column names {list(df.columns[df.columns.duplicated()])}"
        )
    out = pd.DataFrame(
        {c.name: _conform_column(table, c, df[c.name]) for c in contract.columns}, index=df.index
    )
    try:
        contract.pandera_schema().validate(out, lazy=True)
    except pa.errors.SchemaErrors as exc:
        raise _violation_from_pandera(table, exc) from None
    failures = [f for check in contract.frame_checks for f in check(out)]
    if failures:
        raise ContractViolation(table, _describe(failures), failures)
    return out.reset_index(drop=True)


def _describe(failures: list[dict[str, Any]]) -> str:
    by_col: dict[str, list[dict[str, Any]]] = {}
    for f in failures:
        by_col.setdefault(str(f.get("column")), []).append(f)
    parts = []
    for col, fs in by_col.items():
        checks = sorted({str(f.get("check", "")) for f in fs if f.get("check")})
        rows = [f["index"] for f in fs if f.get("index") is not None]
        shown = rows[:10]
        more = f" (+{len(rows) - len(shown)} more)" if len(rows) > len(shown) else ""
        vals = [f.get("failure_case") for f in fs[:3]]
        parts.append(
            f"column {col!r} fails {', '.join(checks) or 'its check'} in rows "
            f"{shown}{more}, e.g. values {vals}"
        )
    return "; ".join(parts)


def _violation_from_pandera(table: str, exc: pa.errors.SchemaErrors) -> ContractViolation:
    fc = exc.failure_cases
    failures = []
    for rec in fc.to_dict("records"):
        col = rec.get("column")
        if col is None or (isinstance(col, float) and math.isnan(col)):
            col = "<frame>"
        idx = rec.get("index")
        if isinstance(idx, float) and math.isnan(idx):
            idx = None
        failures.append(
            {
                "column": col,
                "check": rec.get("check"),
                "index": idx,
                "failure_case": rec.get("failure_case"),
            }
        )
    return ContractViolation(table, _describe(failures), failures)


# ------------------------------------------------------------------------------ JSON Schema
def schema_path(table: str) -> Path:
    return SCHEMA_DIR / f"{table}.schema.json"


def schema_text(table: str) -> str:
    return json.dumps(get_contract(table).json_schema(), indent=2, sort_keys=True) + "\n"


def export_schemas(check: bool = False) -> list[Path]:
    """Write (or with ``check=True`` only list) the stale JSON Schema files of :data:`TABLES`."""
    stale = []
    for name in TABLES:
        path, text = schema_path(name), schema_text(name)
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return stale
