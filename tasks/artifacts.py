"""The Prefect artifacts of the pipeline (what the UI shows of a run) and their keys.

* :func:`artifact_key`: the one spelling of an artifact key (``sqflow-<what>-<run id>``);
* :func:`run_summary_markdown` / :func:`create_run_artifacts`: the nightly run's summary, its
  clusters table and its plots (PNG embedded as data URIs, full-size files linked);
* :func:`report_markdown` / :func:`create_report_artifacts`: the cluster report's;
* :func:`create_bi_artifact`: what the publish step wrote.
"""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from data_contracts.run_record import RunRecord


def artifact_key(run_id: str, what: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes only (``sqflow-<what>-<run id>``)."""
    return f"sqflow-{what}-" + "".join(c if c.isalnum() else "-" for c in run_id.lower())


def run_summary_markdown(rec: RunRecord) -> str:
    """The run's Markdown summary (``summary.md`` and the summary artifact)."""
    s, c, e = rec.sample or {}, rec.cluster or {}, rec.embed or {}
    lines = [
        f"# sqflow nightly run `{rec.run_id}`",
        "",
        f"**Status:** {rec.status}  ",
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
        f"{c.get('n_iter')} passes; warm start: {c.get('warm_start_from') or 'no (k-means++)'}.",
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
            "Plots (PNG files on the run's machine): "
            + ", ".join(f"[{k}](file://{v})" for k, v in rec.plots.items() if k != "seconds"),
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


def create_run_artifacts(rec: RunRecord, md: str) -> dict[str, str]:
    """The nightly run's artifacts: the summary ``md``, the clusters table, links to the PNG
    plots and the plots embedded as Markdown. Returns artifact ids by name."""
    run_id = rec.run_id
    ids = {
        "summary": str(
            create_markdown_artifact(
                md, key=artifact_key(run_id, "summary"), description=f"sqflow nightly run {run_id}"
            )
        )
    }
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
            key=artifact_key(run_id, "clusters"),
            description=f"cluster sizes and centers, run {run_id}",
        )
    )
    for name in ("latent", "convergence"):
        ids[name] = str(
            create_link_artifact(
                f"file://{rec.plots[name]}",
                link_text=f"{name} plot (PNG)",
                key=artifact_key(run_id, name),
                description=f"{name} plot of run {run_id}",
            )
        )
    ids["plots"] = str(
        create_markdown_artifact(
            _plots_md(rec),
            key=artifact_key(run_id, "plots"),
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


def report_markdown(run_id: str, info: dict[str, Any]) -> str:
    """The report artifact's Markdown: a link to the page and the embedding-quality table."""
    q = info["quality"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"# Cluster report, run `{run_id}`",
        "",
        f"[Open the report page (self-contained HTML)](file://{info['html']})  ",
        f"`{info['html']}`",
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


def create_report_artifacts(run_id: str, info: dict[str, Any]) -> dict[str, str]:
    """The report stage's artifacts: Markdown with a link to the page, and the per-cluster
    table (``info``: :func:`sqflow.pipeline.report.report_stage`'s dict)."""
    key = artifact_key(run_id, "report")
    return {
        "report": str(
            create_markdown_artifact(
                report_markdown(run_id, info),
                key=key,
                description=f"cluster report of run {run_id}",
            )
        ),
        "clusters": str(
            create_table_artifact(
                info["rows"],
                key=key + "-clusters",
                description=f"cluster_report table of run {run_id}",
            )
        ),
    }


def create_bi_artifact(result: Any) -> str | None:
    """Markdown artifact of a :class:`sqflow.bi.publish.PublishResult` (None outside a run)."""
    from prefect.context import FlowRunContext, TaskRunContext

    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        return None
    return str(
        create_markdown_artifact(
            result.to_markdown(),
            key=artifact_key(result.run_id, "bi"),
            description=f"BI tables of run {result.run_id}",
        )
    )
