"""The Prefect artifacts of the pipeline (what the UI shows of a run) and their keys.

Keys are stable per kind and dataset (:func:`artifact_key`: ``sqflow-<kind>-<dataset>``), so
every night is a new version of the same artifact and the UI's artifact page shows the
history of each one. The kinds (``KINDS``): ``summary``, ``clusters``, ``plots``, ``trend``
(one row per night: headline figures), ``drift``, ``drift-statistics``, ``report``,
``report-clusters``, ``bi``, ``retrain``.

* :func:`run_summary_markdown` / :func:`create_run_artifacts`: the nightly run's summary, its
  clusters table, its plots (PNG embedded as data URIs; no ``file://`` links, which a browser
  on another machine cannot open) and the trend table (:func:`trend_rows`);
* :func:`report_markdown` / :func:`create_report_artifacts`: the cluster report's;
* :func:`create_bi_artifact`: what the publish step wrote.
"""

from __future__ import annotations

import math
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from data_contracts.run_record import RunRecord

#: the artifact kinds of a dataset (one key each)
KINDS = (
    "summary",
    "clusters",
    "plots",
    "trend",
    "drift",
    "drift-statistics",
    "report",
    "report-clusters",
    "bi",
    "retrain",
)


def artifact_key(kind: str, dataset: str | None) -> str:
    """The key of artifact ``kind`` of ``dataset``: ``sqflow-<kind>-<dataset>``, lowercase
    letters, digits and dashes only (Prefect's rule). Stable over nights: each run adds a
    version. ``dataset`` None (a run that stopped before sampling): ``unknown``."""
    if kind not in KINDS:
        raise ValueError(f"artifact kind {kind!r}; valid: {', '.join(KINDS)}")
    slug = "".join(c if c.isalnum() else "-" for c in (dataset or "unknown").lower()).strip("-")
    return f"sqflow-{kind}-{slug or 'unknown'}"


def _convergence_md(c: dict[str, Any]) -> str:
    """`` of max_iter N, converged`` / ``..., stopped at the pass budget`` (cluster stage)."""
    if c.get("max_iter") is None or c.get("converged") is None:
        return ""
    how = "converged" if c["converged"] else "stopped at the pass budget"
    return f" of max_iter {c['max_iter']}, {how}"


def run_summary_markdown(rec: RunRecord) -> str:
    """The run's Markdown summary (``summary.md`` and the summary artifact)."""
    s, c, e = rec.sample or {}, rec.cluster or {}, rec.embed or {}
    lines = [
        f"# sqflow nightly run `{rec.run_id}`",
        "",
        f"**Status:** {rec.status}"
        + (f" (**DEGRADED**: {'; '.join(rec.degraded_reasons)})" if rec.degraded_reasons else "")
        + "  ",
        f"**Dataset:** {rec.dataset}  **Encoder:** {rec.encoder_version}  ",
        f"**Started:** {rec.started_at}  **Finished:** {rec.finished_at}",
        "",
        "## Counts",
        "",
        "| items found | accepted | quarantined | in this run | labeled |",
        "|---:|---:|---:|---:|---:|",
        f"| {s['n_scanned']} | {s['n_accepted']} | {s['n_quarantined']} | {s['n_selected']} "
        f"| {s['n_labeled']} |",
        "",
    ]
    if s.get("top_quarantine_reasons"):
        lines += [
            "Top quarantine reasons: "
            + "; ".join(f"{k} ({v})" for k, v in s["top_quarantine_reasons"].items()),
            "",
        ]
    lines += [
        "## Monitor (drift)",
        "",
        *_monitor_md(rec.monitor),
        "",
        "## Clustering",
        "",
        f"Objective (mean min_k ||z - y_k||^r): **{c.get('objective', float('nan')):.6g}** after "
        f"{c.get('n_iter')} passes{_convergence_md(c)}; warm start: "
        f"{c.get('warm_start_from') or 'no (k-means++)'}.",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    for name, sec in rec.timings.items():
        lines.append(f"| {name} | {sec:.2f} |")
    if rec.stage_error("report"):
        lines += ["", f"**The cluster report FAILED** ({rec.stage_error('report')})."]
    lines += ["", "## Outputs", ""]
    for name, path in rec.outputs.items():
        lines.append(f"- {name}: `{path}`")
    if rec.plots:
        lines += [
            "",
            f"Plots: artifact `{artifact_key('plots', rec.dataset)}` (embedded); full-size PNG "
            "files on the run's machine: "
            + ", ".join(f"`{v}`" for k, v in rec.plots.items() if k != "seconds"),
        ]
    lines += ["", f"Embedding: {e.get('n_rows')} rows x {e.get('dim')} on {e.get('device')}."]
    return "\n".join(lines) + "\n"


def _monitor_md(mon: dict[str, Any] | str | None) -> list[str]:
    if not mon:
        return ["Not reached: the run stopped before the monitor stage."]
    if isinstance(mon, str):  # records written before the monitor existed
        return [mon]
    if mon.get("error"):
        return [
            f"**The monitor stage FAILED** ({mon['error']}): no drift decision for this run; "
            "the run went on with the current encoder."
        ]
    lines = [
        f"**Decision: {mon['status']}** against the reference of encoder "
        f"`{mon['reference_version']}`.",
        "",
    ]
    lines += [f"- {r}" for r in mon.get("reasons", [])]
    lines += ["", f"**Retraining:** {mon['retrain']['message']}"]
    if mon.get("report_path"):
        lines += ["", f"Full drift report: `{mon['report_path']}`"]
    return lines


def _num(v: Any, digits: int = 6) -> float | None:
    """A plain float rounded for a table cell (None for missing / NaN)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else round(f, digits)


def trend_row(rec: RunRecord) -> dict[str, Any]:
    """One night's headline figures: sizes, quarantine, the SQ objective, the drift decision
    and statistics, the quality checks of the report, the outcome."""
    s, c = rec.sample or {}, rec.cluster or {}
    mon = rec.monitor if isinstance(rec.monitor, dict) else {}
    stats = {r.get("statistic"): r for r in mon.get("statistics") or []}
    q = (rec.report or {}).get("quality") or {}
    return {
        "run_id": rec.run_id,
        "started_at": rec.started_at,
        "status": rec.status,
        "outcome": rec.outcome,
        "encoder": rec.encoder_version,
        "rows": s.get("n_selected"),
        "quarantined": s.get("n_quarantined"),
        "objective": _num(c.get("objective")),
        "passes": c.get("n_iter"),
        "drift": mon.get("status") or ("monitor failed" if mon.get("error") else None),
        "mmd": _num((stats.get("mmd") or {}).get("value")),
        "ks": _num((stats.get("ks") or {}).get("value")),
        "distortion": _num((stats.get("distortion") or {}).get("value")),
        "occupancy": _num((stats.get("occupancy") or {}).get("value")),
        "retrain": (mon.get("retrain") or {}).get("status"),
        "knn_accuracy": _num(q.get("knn_accuracy"), 4),
        "majority_agreement": _num(q.get("majority_agreement"), 4),
        "trustworthiness": _num(q.get("trustworthiness"), 4),
        "seconds": _num(rec.timings.get("total"), 1),
    }


def trend_rows(records: list[RunRecord], last: int = 60) -> list[dict[str, Any]]:
    """The trend table: :func:`trend_row` of the ``last`` records, oldest first."""
    return [trend_row(r) for r in sorted(records, key=lambda r: r.run_id)[-last:]]


def create_run_artifacts(
    rec: RunRecord, md: str, history: list[RunRecord] | None = None
) -> dict[str, str]:
    """The nightly run's artifacts, each a new version of its dataset's key: the summary
    ``md``, the clusters table, the plots embedded as Markdown, and the trend table over
    ``history`` (earlier records of the dataset; this run is added). Returns ids by kind."""
    run_id, ds = rec.run_id, rec.dataset
    ids = {
        "summary": str(
            create_markdown_artifact(
                md, key=artifact_key("summary", ds), description=f"sqflow nightly run {run_id}"
            )
        )
    }
    others = [r for r in history or [] if r.run_id != run_id and r.dataset == ds]
    ids["trend"] = str(
        create_table_artifact(
            trend_rows([*others, rec]),
            key=artifact_key("trend", ds),
            description=f"headline figures per night of {ds} (latest: run {run_id})",
        )
    )
    if rec.cluster is None:  # stopped before clustering: nothing more to show
        return ids
    table = [
        {
            "cluster_id": int(c["cluster_id"]),
            "size": int(c["size"]),
            "mean_distance": None if c["mean_distance"] is None else round(c["mean_distance"], 5),
            "majority_label": c["majority_label"],
            "label_purity": None if c["label_purity"] is None else round(c["label_purity"], 4),
            "center": ", ".join(f"{v:.4f}" for v in c["center"]),
        }
        for c in rec.clusters
    ]
    ids["clusters"] = str(
        create_table_artifact(
            table,
            key=artifact_key("clusters", ds),
            description=f"cluster sizes and centers, run {run_id}",
        )
    )
    if not rec.plots:
        return ids
    ids["plots"] = str(
        create_markdown_artifact(
            _plots_md(rec),
            key=artifact_key("plots", ds),
            description=f"latent space and convergence plots of run {run_id} (embedded PNG)",
        )
    )
    return ids


def _plots_md(rec: RunRecord, max_side: int = 520) -> str:
    """Markdown with the run's PNG plots embedded as data URIs (the Prefect UI renders them;
    the full-size files stay in the run folder). Thumbnails keep the artifact small."""
    import base64
    import io

    from PIL import Image

    parts = [f"# Plots of run `{rec.run_id}`", ""]
    for name, title in (
        ("latent", "Latent space with the SQ centers"),
        ("convergence", "SQ convergence (objective estimate per block)"),
    ):
        with Image.open(rec.plots[name]) as im:
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
        b64 = base64.b64encode(buf.getvalue()).decode()
        parts += [
            f"## {title}",
            "",
            f"![{name}](data:image/png;base64,{b64})",
            "",
            f"Full size: `{rec.plots[name]}`",
            "",
        ]
    return "\n".join(parts)


def report_markdown(run_id: str, info: dict[str, Any], dataset: str | None = None) -> str:
    """The report artifact's Markdown: a link to the page and the embedding-quality table."""
    q = info["quality"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"# Cluster report, run `{run_id}`",
        "",
        "The report page (self-contained HTML, opens offline in a browser) on the run's "
        f"machine: `{info['html']}`; its per-cluster table is the artifact "
        f"`{artifact_key('report-clusters', dataset)}`.",
        "",
        "| embedding quality (labeled hold-out) | this run | previous run |",
        "|---|---:|---:|",
        f"| neighbour check (kNN accuracy) | {pct(q['knn_accuracy'])} | "
        f"{pct(q['previous'].get('knn_accuracy'))} |",
        f"| cluster check (majority label is own) | {pct(q['majority_agreement'])} | "
        f"{pct(q['previous'].get('majority_agreement'))} |",
        f"| trustworthiness | {num(q['trustworthiness'])} | "
        f"{num(q['previous'].get('trustworthiness'))} |",
        "",
        f"Held-out labeled items: {q['n_heldout']}.",
    ]
    if info["confused_pairs"]:
        lines += [
            "",
            "Easily confused cluster pairs: "
            + ", ".join(f"{a} & {b}" for a, b in info["confused_pairs"])
            + ".",
        ]
    return "\n".join(lines) + "\n"


def create_report_artifacts(
    run_id: str, info: dict[str, Any], dataset: str | None = None
) -> dict[str, str]:
    """The report stage's artifacts: Markdown with the page's path and the quality table, and
    the per-cluster table (``info``: :func:`sqflow.pipeline.report.report_stage`'s dict)."""
    return {
        "report": str(
            create_markdown_artifact(
                report_markdown(run_id, info, dataset),
                key=artifact_key("report", dataset),
                description=f"cluster report of run {run_id}",
            )
        ),
        "clusters": str(
            create_table_artifact(
                info["rows"],
                key=artifact_key("report-clusters", dataset),
                description=f"cluster_report table of run {run_id}",
            )
        ),
    }


def create_bi_artifact(result: Any, dataset: str | None = None) -> str | None:
    """Markdown artifact of a :class:`sqflow.bi.publish.PublishResult` (None outside a run)."""
    from prefect.context import FlowRunContext, TaskRunContext

    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        return None
    return str(
        create_markdown_artifact(
            result.to_markdown(),
            key=artifact_key("bi", dataset),
            description=f"BI tables of run {result.run_id}",
        )
    )
