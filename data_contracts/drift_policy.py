"""Contract of the drift policy: which statistics ``sqflow.drift.detect_drift`` computes, their
thresholds, the minimum data for a decision, the bounded subsample sizes, and how the statistics
are combined into one decision.

Statistics (names used in ``statistics`` and ``required``):

- ``mmd``: two-sample test on the embeddings, maximum mean discrepancy with an RBF kernel
  (bandwidth = median pairwise distance of the pooled subsample), p-value by permutation.
  Flags drift when ``p <= alpha``.
- ``ks``: Kolmogorov-Smirnov test per embedding dimension, p-values corrected for the number of
  dimensions (``ks_correction``: Holm or Bonferroni). Flags drift when the smallest corrected
  ``p <= alpha``.
- ``distortion``: quantization distortion ratio = mean ``min_k ||z - c_k||^r`` of the batch divided
  by that of the reference, under the same centers; p-value by a one-sided permutation test of
  the per-row distortions. Flags drift when ``ratio >= distortion_min_ratio`` AND ``p <= alpha``
  (significant and large enough to matter to the clustering).
- ``occupancy``: the batch's cluster shares against the reference's; value = population
  stability index (PSI), p-value = chi-square test of the 2 x K table of counts. Flags drift when
  ``PSI >= occupancy_min_psi`` AND ``p <= alpha``.

Decision: with ``n_flagged`` statistics flagging drift among those computed, the batch is
``drift`` when ``n_flagged >= min_agreeing`` and every statistic in ``required`` flagged;
otherwise ``no_drift``. A batch (reference) below ``min_batch_rows`` (``min_reference_rows``)
gives ``insufficient_data`` and no decision.

The defaults are justified by ``bench/drift_eval.py`` (results in ``bench/results/drift_eval.md``).

Export the JSON Schema with ``sqflow schemas`` (``--check`` fails when the
committed file is stale). This module imports nothing of ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
DRIFT_POLICY_SCHEMA_PATH = SCHEMA_DIR / "drift_policy.schema.json"

StatisticName = Literal["mmd", "ks", "distortion", "occupancy"]
ALL_STATISTICS: tuple[str, ...] = ("mmd", "ks", "distortion", "occupancy")

#: Columns of the ``drift_reports`` table (one row per statistic and one ``decision`` row per
#: checked run; pandas dtype names). ``value``/``threshold`` of the decision row: statistics
#: flagging drift / ``min_agreeing``; ``drifted`` is null when the data were insufficient.
DRIFT_REPORT_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "reference_version": "str",
    "statistic": "str",
    "value": "float64",
    "threshold": "float64",
    "p_value": "Float64",
    "drifted": "boolean",
    "status": "str",
    "batch_rows": "int64",
    "reference_rows": "int64",
    "created_at": "datetime64[us, UTC]",
}


class DriftPolicy(BaseModel):
    """Thresholds and combination rule of the drift monitor (all fields have defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    statistics: list[StatisticName] = Field(
        default_factory=lambda: list(ALL_STATISTICS),
        description="Statistics to compute (each usable alone). 'distortion' and 'occupancy' "
        "need cluster centers (given, or fitted on the reference).",
    )
    min_agreeing: int = Field(
        1,
        ge=1,
        description="Drift when at least this many computed statistics flag it.",
    )
    required: list[StatisticName] = Field(
        default_factory=list,
        description="Statistics that must flag drift for a 'drift' decision (in addition to "
        "min_agreeing).",
    )
    alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Significance level of every test (KS after its multiple-test correction).",
    )
    min_batch_rows: int = Field(200, ge=10, description="Fewer batch rows: insufficient data.")
    min_reference_rows: int = Field(
        500, ge=10, description="Fewer reference rows: insufficient data."
    )
    max_reference_rows: int = Field(
        20000,
        ge=100,
        description="Reference rows read (uniform subsample without replacement, streamed).",
    )
    max_batch_rows: int = Field(
        20000,
        ge=100,
        description="Batch rows read (uniform subsample without replacement, streamed).",
    )
    mmd_max_rows: int = Field(
        2000,
        ge=50,
        le=5000,
        description="Rows of reference and of batch (each) in the MMD test: the kernel matrix "
        "is (2 x mmd_max_rows)^2 floats.",
    )
    mmd_permutations: int = Field(200, ge=19, description="Permutations of the MMD test.")
    ks_correction: Literal["holm", "bonferroni"] = Field(
        "holm", description="Multiple-test correction over the embedding dimensions."
    )
    distortion_min_ratio: float = Field(
        1.1, gt=0, description="Smallest batch/reference distortion ratio that counts as drift."
    )
    distortion_permutations: int = Field(
        500, ge=19, description="Permutations of the distortion test."
    )
    occupancy_min_psi: float = Field(
        0.1,
        ge=0,
        description="Smallest population stability index that counts as drift (0.1: the usual "
        "'moderate shift' mark; 0.25 'major').",
    )
    psi_epsilon: float = Field(
        1e-4, gt=0, le=0.01, description="Share given to empty clusters in the PSI (avoids log 0)."
    )
    n_clusters: int = Field(
        10, ge=2, description="Centers fitted on the reference when none are given."
    )
    seed: int = Field(0, ge=0, description="Seed of subsampling and permutations.")

    @model_validator(mode="after")
    def _consistent(self) -> DriftPolicy:
        if not self.statistics:
            raise ValueError(f"statistics is empty; choose from {list(ALL_STATISTICS)}")
        if len(set(self.statistics)) != len(self.statistics):
            raise ValueError(f"statistics={self.statistics} lists a statistic twice")
        if self.min_agreeing > len(self.statistics):
            raise ValueError(
                f"min_agreeing={self.min_agreeing} exceeds the {len(self.statistics)} "
                f"statistics computed ({self.statistics}); valid: 1..{len(self.statistics)}"
            )
        missing = [s for s in self.required if s not in self.statistics]
        if missing:
            raise ValueError(
                f"required={self.required} names {missing}, which are not in "
                f"statistics={self.statistics}"
            )
        for name, p in (
            ("mmd_permutations", self.mmd_permutations),
            ("distortion_permutations", self.distortion_permutations),
        ):
            if 1.0 / (p + 1) > self.alpha:
                raise ValueError(
                    f"{name}={p} cannot give a p-value <= alpha={self.alpha} (smallest p is "
                    f"1/({p}+1)); use at least {int(1 / self.alpha)} permutations"
                )
        if self.min_batch_rows > self.max_batch_rows:
            raise ValueError(
                f"min_batch_rows={self.min_batch_rows} > max_batch_rows={self.max_batch_rows}"
            )
        if self.min_reference_rows > self.max_reference_rows:
            raise ValueError(
                f"min_reference_rows={self.min_reference_rows} > "
                f"max_reference_rows={self.max_reference_rows}"
            )
        return self


def _schema_text() -> str:
    return json.dumps(DriftPolicy.model_json_schema(), indent=2, sort_keys=True) + "\n"


def export_schemas(check: bool = False) -> list[Path]:
    """Write (or with ``check=True`` only compare) ``schemas/drift_policy.schema.json``.

    Returns the paths written (``check=False``) or stale (``check=True``)."""
    text = _schema_text()
    current = DRIFT_POLICY_SCHEMA_PATH.read_text() if DRIFT_POLICY_SCHEMA_PATH.exists() else None
    if current == text:
        return []
    if not check:
        DRIFT_POLICY_SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
        DRIFT_POLICY_SCHEMA_PATH.write_text(text)
    return [DRIFT_POLICY_SCHEMA_PATH]


__all__ = [
    "ALL_STATISTICS",
    "DRIFT_POLICY_SCHEMA_PATH",
    "DRIFT_REPORT_COLUMNS",
    "DriftPolicy",
    "StatisticName",
    "export_schemas",
]
