"""Prefect flows: ``nightly`` (sample -> embed -> monitor -> cluster -> report -> publish) and
its stages as flows of their own (``sample``, ``train-encoder``, ``embed``, ``cluster``; the
monitor and retrain flows live in :mod:`flows.monitor`).

Every flow takes ``config``: overrides of :class:`flows.settings.SqflowSettings` (which also
reads ``sqflow.toml`` and ``SQFLOW_*`` variables where the flow runs). One nightly flow run has
one ``run_id`` (``YYYYMMDDTHHMMSSZ-<flow run id prefix>``) that is in every output row.
"""

from __future__ import annotations

import json
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.monitor import monitor_flow
from flows.settings import load_settings
from sqflow.atomic_files import atomic_write_text
from sqflow.layout import OutputLayout, current_version, new_run_id, output_lock
from tasks.report import report_task
from tasks.stages import (
    cluster_task,
    embed_task,
    plots_task,
    publish_task,
    sample_task,
    train_encoder_task,
)


def _config(config: dict[str, Any] | None) -> dict[str, Any]:
    cfg = load_settings(**(config or {})).flow_parameters()
    cfg["output_dir"] = str(Path(cfg["output_dir"]).expanduser().resolve())
    return cfg


def _flow_run_id() -> str | None:
    fid = flow_run.get_id()
    return str(fid) if fid else None


def _key(run_id: str, what: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes only."""
    return f"sqflow-{what}-" + "".join(c if c.isalnum() else "-" for c in run_id.lower())


@flow(name="sample", log_prints=True)
def sample_flow(config: dict[str, Any] | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Read the source and write the run's manifest and quarantine."""
    cfg = _config(config)
    return sample_task(cfg, run_id or new_run_id(_flow_run_id()))


@flow(name="train-encoder", log_prints=True)
def train_encoder_flow(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the triplet encoder on the labeled items, register it, embed the reference set."""
    return train_encoder_task(_config(config))


@flow(name="embed", log_prints=True)
def embed_flow(run_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Embed a sampled run's manifest with the current encoder into its Zarr store."""
    return embed_task(_config(config), run_id)


@flow(name="cluster", log_prints=True)
def cluster_flow(run_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """SQ on Dask over an embedded run's store; assignments for every row."""
    return cluster_task(_config(config), run_id)


def _summary_md(rec: dict[str, Any]) -> str:
    s, c, e = rec["sample"], rec.get("cluster") or {}, rec.get("embed") or {}
    lines = [
        f"# sqflow nightly run `{rec['run_id']}`",
        "",
        f"**Status:** {rec['status']}  ",
        f"**Dataset:** {rec['dataset']}  **Encoder:** {rec.get('encoder_version')}  ",
        f"**Started:** {rec['started_at']}  **Finished:** {rec.get('finished_at')}",
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
        *_monitor_md(rec.get("monitor")),
        "",
        "## Clustering",
        "",
        f"Objective (mean min_k ||z - y_k||^r): **{c.get('objective', float('nan')):.6g}** after "
        f"{c.get('n_iter')} passes; warm start: {c.get('warm_start_from') or 'no (k-means++)'}.",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    for name, sec in rec["timings"].items():
        lines.append(f"| {name} | {sec:.2f} |")
    if (rec.get("report") or {}).get("error"):
        lines += ["", f"**The cluster report FAILED** ({rec['report']['error']})."]
    lines += ["", "## Outputs", ""]
    for name, path in rec["outputs"].items():
        lines.append(f"- {name}: `{path}`")
    if rec.get("plots"):
        lines += [
            "",
            "Plots (PNG files on the run's machine): "
            + ", ".join(f"[{k}](file://{v})" for k, v in rec["plots"].items() if k != "seconds"),
        ]
    lines += ["", f"Embedding: {e.get('n_rows')} rows x {e.get('dim')} on {e.get('device')}."]
    return "\n".join(lines) + "\n"


def _monitor_md(mon: dict[str, Any] | None) -> list[str]:
    if not mon:
        return ["Not reached: the run stopped before the monitor stage."]
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


def _recorded_stage(stage: str, fn: Any, *args: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run a stage whose failure must not cost users tonight's clusters (monitor, report): the
    error is logged and returned as ``{"error", "seconds"}`` for the summary and run.json."""
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the summary, run.json and the log
        get_run_logger().error("%s stage failed: %s: %s", stage, type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
    return {k: v for k, v in out.items() if k not in drop}


@flow(name="nightly", log_prints=True)
def nightly(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nightly run: sample -> embed -> monitor -> cluster -> report -> publish.

    The monitor compares the run's embeddings with the current encoder's reference and, on
    drift, retrains (a new encoder version; the run's batch is re-embedded with it before
    clustering). The monitor and the report are recorded but not fatal: when either fails the
    summary says so and the clusters are still published.

    Holds ``<output>/.nightly.lock`` for the whole run (a second run on the same output waits
    ``lock_timeout_s`` and then fails with a clear message). Trains and registers an encoder
    first when none exists and ``train_if_missing`` is true. Leaves as artifacts a Markdown
    summary, a table of the clusters, the plots (embedded PNG) and links to the full-size PNG
    files; and ``runs/<run_id>/run.json`` + ``summary.md``.
    """
    log = get_run_logger()
    cfg = _config(config)
    lay = OutputLayout.at(cfg["output_dir"], cfg.get("models_dir"))
    started = datetime.now(UTC)
    run_id = new_run_id(_flow_run_id(), started)
    with output_lock(lay, run_id, timeout_s=float(cfg["lock_timeout_s"])):
        t_all = time.perf_counter()
        rec: dict[str, Any] = {
            "run_id": run_id,
            "flow_run_id": _flow_run_id(),
            "started_at": started.isoformat(),
            "status": "running",
            "dataset": None,
            "timings": {},
            "outputs": {},
            "n_clusters": int(cfg["n_clusters"]),
            "waited_for_lock_s": (datetime.now(UTC) - started).total_seconds(),
        }
        rd = lay.run_dir(run_id)
        log.info("nightly run %s -> %s", run_id, rd)
        try:
            rec["sample"] = sample_task(cfg, run_id)
            rec["dataset"] = rec["sample"]["dataset"]
            rec["timings"]["sample"] = rec["sample"]["seconds"]
            if current_version(lay.models_dir) is None:
                if not cfg["train_if_missing"]:
                    raise FileNotFoundError(
                        f"no encoder registered in {str(lay.models_dir)!r} and "
                        "train_if_missing is false: run the train-encoder flow first"
                    )
                log.info("no encoder registered yet: training one first")
                rec["train"] = train_encoder_task(cfg)
                rec["timings"]["train-encoder"] = rec["train"]["seconds"]
            rec["embed"] = embed_task(cfg, run_id)
            rec["encoder_version"] = rec["embed"]["encoder_version"]
            rec["timings"]["embed"] = rec["embed"]["seconds"]
            # the full drift report stays in drift_report.json; the record keeps the decision
            rec["monitor"] = _recorded_stage(
                "monitor",
                lambda: monitor_flow(run_id=run_id, config=cfg),
                drop=("report", "markdown"),
            )
            rec["timings"]["monitor"] = rec["monitor"]["seconds"]
            # a successful retrain made a new version current and re-embedded the batch
            rec["encoder_version"] = rec["monitor"].get("encoder_version") or rec["encoder_version"]
            rec["cluster"] = cluster_task(cfg, run_id)
            rec["timings"]["cluster"] = rec["cluster"]["seconds"]
            rec["plots"] = plots_task(cfg, run_id, rec["cluster"]["loss_curve"])
            rec["timings"]["plots"] = rec["plots"]["seconds"]
            rec["report"] = _recorded_stage("report", report_task, cfg, run_id, rec, drop=("rows",))
            rec["timings"]["report"] = rec["report"]["seconds"]
            rec["publish"] = publish_task(cfg, run_id, rec)
            rec["timings"]["publish"] = rec["publish"]["seconds"]
            rec["status"] = "completed"
        except BaseException as exc:
            rec["status"] = "failed"
            rec["error"] = f"{type(exc).__name__}: {exc}"
            rec["traceback"] = traceback.format_exc(limit=5)
            raise
        finally:
            rec["finished_at"] = datetime.now(UTC).isoformat()
            rec["timings"]["total"] = time.perf_counter() - t_all
            rec["outputs"] = {
                "run folder": str(rd),
                "embedding store": str(rd / "embeddings.zarr"),
                "published Parquet": str(lay.published),
                "DuckDB": str(lay.duckdb_path),
                "models": str(lay.models_dir),
            }
            if (rec.get("report") or {}).get("html"):
                rec["outputs"]["cluster report"] = rec["report"]["html"]
            # a failed run leaves its record too (status, error)
            atomic_write_text(
                rd / "run.json",
                json.dumps(
                    {k: v for k, v in rec.items() if k != "cluster"}
                    | {
                        "cluster": {
                            k: v for k, v in (rec.get("cluster") or {}).items() if k != "loss_curve"
                        }
                    },
                    indent=2,
                    default=str,
                ),
            )
        md = _summary_md(rec)
        atomic_write_text(rd / "summary.md", md)
    rec["artifacts"] = _artifacts(rec, md)
    return rec


def _artifacts(rec: dict[str, Any], md: str) -> dict[str, str]:
    run_id = rec["run_id"]
    ids = {
        "summary": str(
            create_markdown_artifact(
                md, key=_key(run_id, "summary"), description=f"sqflow nightly run {run_id}"
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
        for c in rec["cluster"]["clusters"]
    ]
    ids["clusters"] = str(
        create_table_artifact(
            table,
            key=_key(run_id, "clusters"),
            description=f"cluster sizes and centers, run {run_id}",
        )
    )
    for name in ("latent", "convergence"):
        ids[name] = str(
            create_link_artifact(
                f"file://{rec['plots'][name]}",
                link_text=f"{name} plot (PNG)",
                key=_key(run_id, name),
                description=f"{name} plot of run {run_id}",
            )
        )
    ids["plots"] = str(
        create_markdown_artifact(
            _plots_md(rec),
            key=_key(run_id, "plots"),
            description=f"latent space and convergence plots of run {run_id} (embedded PNG)",
        )
    )
    return ids


def _plots_md(rec: dict[str, Any], max_side: int = 520) -> str:
    """Markdown with the run's PNG plots embedded as data URIs (the Prefect UI renders them;
    the full-size files stay in the run folder). Thumbnails keep the artifact small."""
    import base64
    import io

    from PIL import Image

    parts = [f"# Plots of run `{rec['run_id']}`", ""]
    for name, title in (
        ("latent", "Latent space with the SQ centers"),
        ("convergence", "SQ convergence (objective estimate per block)"),
    ):
        with Image.open(rec["plots"][name]) as im:
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
        b64 = base64.b64encode(buf.getvalue()).decode()
        parts += [
            f"## {title}",
            "",
            f"![{name}](data:image/png;base64,{b64})",
            "",
            f"Full size: `{rec['plots'][name]}`",
            "",
        ]
    return "\n".join(parts)
