"""The cluster report: what each cluster is, whether the embedding kept the meaning of the
labels, and whether tonight's run can be trusted, for quality engineers and line managers.

Pure library (no Prefect): :func:`build_report` takes one run's data and writes a
self-contained HTML page (every chart and thumbnail embedded as a PNG data URI; works offline)
and returns the per-cluster table for the ``cluster_report`` BI table.

Example (a notebook)::

    from sqflow.report import build_report, HeldOut, RunHealth
    result = build_report("run-1", out_dir, embeddings=z, cluster_ids=c, distances=d,
                          centers=centers, sample_ids=ids, labels=y,
                          thumbnails=lambda ids: images_for(ids),
                          heldout=HeldOut(z_test, y_test, inputs=x_test),
                          health=RunHealth(objective=est.inertia_, loss_curve=est.loss_curve_))
    result.html_path, result.table
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic_files import atomic_write_parquet, atomic_write_text
from .compute import (
    ClusterFigures,
    ConfusedPair,
    HeldOut,
    PreviousRun,
    Quality,
    ReportData,
    RunHealth,
    ThumbnailFn,
    compute_report,
    knn_accuracy,
    summarise_previous,
)
from .render import render_html

__all__ = [
    "build_report",
    "cluster_table",
    "compute_report",
    "render_html",
    "ReportResult",
    "HeldOut",
    "RunHealth",
    "PreviousRun",
    "ReportData",
    "ClusterFigures",
    "ConfusedPair",
    "Quality",
    "knn_accuracy",
    "summarise_previous",
    "CLUSTER_REPORT_COLUMNS",
    "REPORT_HTML",
    "REPORT_TABLE",
    "REPORT_JSON",
]

#: File names written into the output folder by :func:`build_report`.
REPORT_HTML = "report.html"
REPORT_TABLE = "cluster_report.parquet"
REPORT_JSON = "report.json"

#: Columns of the per-cluster table (the ``cluster_report`` BI table).
CLUSTER_REPORT_COLUMNS = (
    "run_id",
    "cluster_id",
    "size",
    "majority_label",
    "purity",
    "mean_distance",
    "knn_accuracy",
    "majority_agreement",
    "trustworthiness",
    "representative_sample_ids",
)


@dataclass
class ReportResult:
    html_path: Path
    table_path: Path
    json_path: Path
    table: pd.DataFrame
    data: ReportData


def cluster_table(data: ReportData) -> pd.DataFrame:
    """The per-cluster figures as a DataFrame (one row per cluster; the run-level quality
    figures repeated on every row so a BI tool can chart them without a join).
    ``representative_sample_ids`` is a JSON array of the ids nearest to the center."""
    q = data.quality
    rows = [
        {
            "run_id": data.run_id,
            "cluster_id": c.cluster_id,
            "size": c.size,
            "majority_label": c.majority_label,
            "purity": c.purity,
            "mean_distance": c.mean_distance,
            "knn_accuracy": q.knn_accuracy,
            "majority_agreement": q.majority_agreement,
            "trustworthiness": q.trustworthiness,
            "representative_sample_ids": json.dumps(c.nearest_ids),
        }
        for c in data.clusters
    ]
    df = pd.DataFrame(rows, columns=list(CLUSTER_REPORT_COLUMNS))
    return df.astype(
        {
            "run_id": "str",
            "cluster_id": "int32",
            "size": "int64",
            "majority_label": "Int64",
            "purity": "float64",
            "mean_distance": "float64",
            "knn_accuracy": "float64",
            "majority_agreement": "float64",
            "trustworthiness": "float64",
            "representative_sample_ids": "str",
        }
    )


def build_report(
    run_id: str,
    out_dir: str | os.PathLike[str],
    *,
    embeddings: Any,
    cluster_ids: Any,
    distances: Any,
    centers: Any,
    sample_ids: Sequence[str] | np.ndarray,
    labels: Any | None = None,
    thumbnails: ThumbnailFn | None = None,
    heldout: HeldOut | None = None,
    previous: Sequence[PreviousRun] = (),
    health: RunHealth | None = None,
    title: str | None = None,
    item_kind: str = "image",
    k_selection: dict[str, Any] | None = None,
    **options: Any,
) -> ReportResult:
    """Compute the report of one run and write it into ``out_dir``:

    * ``report.html``: the self-contained page;
    * ``cluster_report.parquet``: the per-cluster table (also returned as ``result.table``);
    * ``report.json``: every figure as JSON (for the next run's "previous value").

    Arguments are those of :func:`sqflow.report.compute.compute_report` (``options`` are passed
    on to it) plus ``thumbnails(ids) -> images`` (None for vector data: members are shown as a
    table of their embedding coordinates) and ``item_kind`` ("timeseries": the members are drawn
    as line plots). ``k_selection``: the ``KSelection.as_dict()`` of a run with
    ``n_clusters="auto"`` (the page then plots the criterion's curve). Files are written
    atomically.
    """
    data = compute_report(
        run_id,
        embeddings=embeddings,
        cluster_ids=cluster_ids,
        distances=distances,
        centers=centers,
        sample_ids=sample_ids,
        labels=labels,
        heldout=heldout,
        previous=previous,
        health=health,
        **options,
    )
    page = render_html(
        data,
        thumbnails=thumbnails,
        embeddings=embeddings,
        labels=labels,
        title=title,
        item_kind=item_kind,
        k_selection=k_selection,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = cluster_table(data)
    html_path, table_path, json_path = out / REPORT_HTML, out / REPORT_TABLE, out / REPORT_JSON
    atomic_write_text(html_path, page)
    atomic_write_parquet(table, table_path)
    atomic_write_text(json_path, json.dumps(data.to_dict(), indent=1, default=str))
    return ReportResult(html_path, table_path, json_path, table, data)
