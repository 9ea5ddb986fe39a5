"""The cluster report as one self-contained HTML page (no CDN, no web fonts, no external files).

Every picture is a PNG embedded as a ``data:image/png;base64,...`` URI: the charts (drawn with
matplotlib through :mod:`sqflow.plots` where a helper exists) and the item thumbnails. Numbers
that a test or a reader may want to check carry ``data-field`` / ``data-cluster`` attributes.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .compute import ClusterFigures, ReportData, ThumbnailFn, take_rows

__all__ = ["render_html", "png_data_uri", "image_to_png", "fmt_pct", "fmt_int", "fmt_num"]

QUALITY_TEXT = {
    "knn_accuracy": (
        "Neighbour check (kNN accuracy)",
        "For each labeled item held out from training: do most of its {knn_k} nearest items in "
        "the embedding carry the same label? Share of items where they do.",
    ),
    "majority_agreement": (
        "Cluster check",
        "Share of held-out labeled items that land in a cluster whose most common label is "
        "their own label.",
    ),
    "trustworthiness": (
        "Neighbourhood kept (trustworthiness)",
        "How well items that are neighbours in the embedding were also neighbours in the "
        "original data ({trust_k} neighbours; 1.0 = perfectly kept, 0.5 = no better than "
        "chance).",
    ),
}


# ------------------------------------------------------------------------------ formatting
def fmt_pct(v: float | None, digits: int = 1) -> str:
    """0.9731 -> '97.3%'; None -> 'n/a'."""
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}%"


def fmt_int(v: int | None) -> str:
    return "n/a" if v is None else f"{int(v):,}"


def fmt_num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


# ------------------------------------------------------------------------------ images
def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_to_png(img: np.ndarray, max_side: int = 96) -> bytes:
    """PNG bytes of an (H, W) or (H, W, 3|4) image, shrunk to at most ``max_side`` pixels on
    its longer side (so large inspection photos keep the page small); floats are taken as
    0..1 (or 0..255 when their maximum exceeds 1)."""
    from PIL import Image

    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"a thumbnail must be (H, W) or (H, W, 3|4); got shape {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        scale = 255.0 if np.nanmax(a) <= 1.0 else 1.0
        a = np.clip(np.nan_to_num(a) * scale, 0, 255).astype(np.uint8)
    im = Image.fromarray(a)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _fig_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def chart_latent(data: ReportData, tmp: Path) -> bytes:
    from sqflow.plots import plot_latent

    n_plot = len(data.plot_rows)
    title = (
        f"Latent space: {n_plot:,} of {data.n_items:,} items, centers numbered"
        if n_plot < data.n_items
        else f"Latent space: all {data.n_items:,} items, centers numbered"
    )
    p = plot_latent(
        data.plot_embeddings,
        data.plot_labels,
        tmp / "latent.png",
        centers=data.centers,
        title=title,
        max_points=n_plot,
    )
    return p.read_bytes()


def chart_convergence(data: ReportData, tmp: Path) -> bytes | None:
    from sqflow.plots import plot_convergence

    curve = list(data.health.loss_curve or ())
    if not curve:
        return None
    p = plot_convergence(
        {"objective estimate": curve},
        tmp / "convergence.png",
        title="Clustering convergence (lower is better; flat = settled)",
        xlabel=data.health.loss_curve_label,
        ylabel="objective",
    )
    return p.read_bytes()


def chart_sizes(data: ReportData) -> bytes:
    """Bars: size per cluster tonight; black ticks: the previous run's sizes."""
    plt = _plt()
    k = data.k
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(k)
    sizes = [c.size for c in data.clusters]
    ax.bar(x, sizes, color="tab:blue", alpha=0.8, label="this run")
    prev = [c.trend[-2][1] if len(c.trend) >= 2 else None for c in data.clusters]
    if any(v is not None for v in prev):
        px = [i for i, v in enumerate(prev) if v is not None]
        ax.scatter(
            px,
            [prev[i] for i in px],
            marker="_",
            s=400,
            color="black",
            linewidths=2,
            label="previous run",
            zorder=3,
        )
    ax.set_xticks(x, [str(i) for i in x])
    ax.set_xlabel("cluster")
    ax.set_ylabel("items")
    ax.set_title("Cluster sizes")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _fig_png(fig)


def chart_trends(data: ReportData) -> bytes | None:
    """Size of each cluster over the last runs (one line per cluster)."""
    if not data.previous_run_ids:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    cmap = plt.get_cmap("tab20")
    n_runs = len(data.clusters[0].trend)
    for c in data.clusters:
        ys = [np.nan if v is None else v for _, v in c.trend]
        ax.plot(
            np.arange(n_runs),
            ys,
            marker="o",
            lw=1.2,
            color=cmap(c.cluster_id % 20),
            label=str(c.cluster_id),
        )
    labels = [rid[:15] for rid, _ in data.clusters[0].trend]
    ax.set_xticks(np.arange(n_runs), labels, rotation=20, fontsize=7, ha="right")
    ax.set_ylabel("items")
    ax.set_title("Cluster sizes over the last runs (this run on the right)")
    ax.grid(alpha=0.3)
    ax.legend(title="cluster", fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return _fig_png(fig)


# ------------------------------------------------------------------------------ page parts
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0;background:#f5f6f8;color:#1d2430;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;margin:1.6em 0 .5em;border-bottom:2px solid
#d8dde6;padding-bottom:.2em}h3{font-size:1.05em;margin:.2em 0 .4em}
.sub{color:#5a6475}.card{background:#fff;border:1px solid #dde2ea;border-radius:8px;
 padding:14px 18px;margin:12px 0}
table{border-collapse:collapse;margin:6px 0 10px;font-size:.93em}
th,td{border-bottom:1px solid #e3e7ee;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.glance li{margin:.25em 0}.ok{color:#17693a;font-weight:600}.warn{color:#a15c00;font-weight:600}
.bad{color:#b3261e;font-weight:600}.muted{color:#6b7585}
.thumbs{display:flex;flex-wrap:wrap;gap:4px;margin:4px 0 8px}
.thumbs figure{margin:0;text-align:center;font-size:.66em;color:#6b7585;width:60px}
.thumbs img{width:56px;height:56px;image-rendering:pixelated;border:1px solid #ccd3de;
 background:#000}
img.chart{max-width:100%;border:1px solid #dde2ea;border-radius:6px;background:#fff}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.note{background:#fff8e6;border-left:4px solid #e0a100;padding:8px 12px;margin:8px 0}
.cl-head{display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
});
"""


def _td(value: str, field: str | None = None, cluster: int | None = None, cls: str = "num") -> str:
    attrs = f' class="{cls}"' if cls else ""
    if field:
        attrs += f' data-field="{field}"'
    if cluster is not None:
        attrs += f' data-cluster="{cluster}"'
    return f"<td{attrs}>{_e(value)}</td>"


def _change(now: float | None, before: float | None, alert: float) -> str:
    if now is None or before is None:
        return '<span class="muted">-</span>'
    d = now - before
    if d <= -alert:
        return f'<span class="bad">{100 * d:+.1f} points (worse)</span>'
    if d >= alert:
        return f'<span class="ok">{100 * d:+.1f} points (better)</span>'
    return f'<span class="muted">{100 * d:+.1f} points (about the same)</span>'


def _glance(data: ReportData, alert: float) -> str:
    h, q = data.health, data.quality
    items = []
    if not data.labeled:
        items.append(
            '<span class="warn" data-field="no_labels">No labels in this run.</span> '
            "Clusters have no majority label or purity, and no accuracy is measured; "
            "the figures below are label-free."
        )
    if h.drift is None:
        items.append(
            '<span class="warn">Drift: not checked.</span> '
            + _e(
                h.monitor_note
                or "The monitor did not run for this run, so nobody "
                "checked whether tonight's data look like the reference data."
            )
        )
    else:
        drifted = h.drift.get("drifted")
        if drifted is True:
            items.append(
                '<span class="bad">Drift: tonight\'s data differ from the reference '
                "data.</span> Treat the clusters with care; see Run health."
            )
        elif drifted is False:
            items.append(
                '<span class="ok">Drift: none detected.</span> Tonight\'s data look '
                "like the reference data."
            )
        else:
            items.append(
                f'<span class="warn">Drift: no decision ({_e(h.drift.get("status"))}).</span>'
            )
    nq = int(h.n_quarantined or 0)
    items.append(
        f"{fmt_int(data.n_items)} items grouped into {data.k} clusters; "
        + (
            f'<span class="warn">{fmt_int(nq)} item(s) set aside as unreadable or '
            "invalid</span> (see Run health)."
            if nq
            else "no item was set aside."
        )
    )
    for key in ("knn_accuracy", "majority_agreement"):
        v = getattr(q, key)
        if v is None:
            continue
        prev = q.previous.get(key)
        title = QUALITY_TEXT[key][0]
        txt = f"{title}: {fmt_pct(v)}"
        if prev is not None:
            txt += f" (previous run {fmt_pct(prev)}; {_change(v, prev, alert)})"
        items.append(txt if prev is not None else _e(txt))
    if data.pairs:
        items.append(
            f'<span class="warn">{len(data.pairs)} pair(s) of clusters are easily '
            "confused</span> (see Clusters that are easily confused)."
        )
    return '<ul class="glance">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _quality_table(data: ReportData, alert: float) -> str:
    q = data.quality
    if q.knn_accuracy is None and q.trustworthiness is None and q.majority_agreement is None:
        return f'<p class="muted">Not measured: {_e(q.note or "no labeled hold-out")}.</p>'
    prev_name = f" ({_e(q.previous_run_id[:15])})" if q.previous_run_id else ""
    rows = []
    for key in ("knn_accuracy", "majority_agreement", "trustworthiness"):
        title, expl = QUALITY_TEXT[key]
        v, prev = getattr(q, key), q.previous.get(key)
        fmt = fmt_num if key == "trustworthiness" else fmt_pct
        rows.append(
            f'<tr><td><b>{_e(title)}</b><br><span class="sub">'
            f"{_e(expl.format(knn_k=q.knn_k, trust_k=q.trust_k))}</span></td>"
            + _td(fmt(v), key)
            + _td(fmt(prev), f"previous_{key}")
            + f"<td>{_change(v, prev, alert)}</td></tr>"
        )
    note = f'<p class="muted">{_e(q.note)}.</p>' if q.note else ""
    return (
        f'<p>Measured on <b data-field="n_heldout">{fmt_int(q.n_heldout)}</b> labeled items '
        "that the encoder never saw in training or validation (checked on sample ids).</p>"
        '<table><tr><th>figure</th><th class="num">this run</th>'
        f'<th class="num">previous run{prev_name}</th><th>change</th></tr>'
        + "".join(rows)
        + "</table>"
        + note
    )


def _health(data: ReportData, conv_png: bytes | None) -> str:
    h = data.health
    parts = ["<h3>Drift check</h3>"]
    if h.drift is None:
        parts.append(
            '<p class="warn">The drift monitor did not run for this run.</p>'
            f'<p class="muted">{_e(h.monitor_note or "No drift decision was made.")}'
            "</p>"
        )
    else:
        d = h.drift
        dec = {True: "drift detected", False: "no drift", None: "no decision"}.get(
            d.get("drifted"), str(d.get("drifted"))
        )
        parts.append(
            f'<p>Decision: <b data-field="drift_decision">{_e(dec)}</b> '
            f'<span class="muted">({_e(d.get("status", ""))})</span></p>'
        )
        reasons = d.get("reasons") or []
        if reasons:
            parts.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
        stats = d.get("statistics") or []
        if stats:
            parts.append(
                '<table><tr><th>statistic</th><th class="num">value</th>'
                '<th class="num">threshold</th><th class="num">p-value</th>'
                "<th>signals drift</th></tr>"
            )
            for s in stats:
                pv = s.get("p_value")
                parts.append(
                    f"<tr><td>{_e(s.get('statistic') or s.get('name'))}</td>"
                    + _td(fmt_num(_f(s.get("value")), 4))
                    + _td(fmt_num(_f(s.get("threshold")), 4))
                    + _td(fmt_num(_f(pv), 4) if pv is not None else "-")
                    + f"<td>{_e({True: 'yes', False: 'no'}.get(s.get('drifted'), 'n/a'))}</td>"
                    "</tr>"
                )
            parts.append("</table>")
    parts.append("<h3>Items set aside (quarantine)</h3>")
    nq = int(h.n_quarantined or 0)
    parts.append(
        f'<p><b data-field="n_quarantined">{fmt_int(nq)}</b> item(s) could not be '
        "used (unreadable, wrong size, values out of range, duplicate id...).</p>"
    )
    if h.quarantine_reasons:
        parts.append(
            '<table><tr><th>reason</th><th class="num">items</th></tr>'
            + "".join(
                f"<tr><td>{_e(r)}</td>{_td(fmt_int(c))}</tr>"
                for r, c in list(h.quarantine_reasons.items())[:5]
            )
            + "</table>"
        )
    parts.append("<h3>Clustering</h3>")
    obj = "n/a" if h.objective is None else f"{h.objective:.6g}"
    passes = "" if h.n_passes is None else f" after {h.n_passes} pass(es) over the data"
    warm = f" It started from the centers of {_e(h.warm_start_from)}." if h.warm_start_from else ""
    parts.append(
        f"<p>Objective (average spread of the items around their center; lower = "
        f'tighter clusters): <b data-field="objective">{_e(obj)}</b>{passes}.{warm}'
        "</p>"
    )
    if conv_png:
        parts.append(
            f'<img class="chart" alt="convergence curve" '
            f'src="{png_data_uri(conv_png)}">'
            f'<p class="muted">Each point: the objective estimated after one '
            f"{_e(h.loss_curve_label)}; a curve that flattens out means the clustering "
            "has settled.</p>"
        )
    if h.timings:
        parts.append(
            '<h3>Timings</h3><table><tr><th>stage</th><th class="num">seconds</th>'
            "</tr>"
            + "".join(f"<tr><td>{_e(s)}</td>{_td(f'{t:.1f}')}</tr>" for s, t in h.timings.items())
            + "</table>"
        )
    return "\n".join(parts)


def _f(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _cluster_table(data: ReportData) -> str:
    rows = []
    for c in data.clusters:
        prev = c.trend[-2][1] if len(c.trend) >= 2 else None
        rows.append(
            f'<tr data-cluster="{c.cluster_id}">'
            + _td(str(c.cluster_id), "cluster_id", c.cluster_id)
            + _td(fmt_int(c.size), "size", c.cluster_id)
            + _td(fmt_int(prev), "previous_size", c.cluster_id)
            + _td(fmt_pct(c.share), "share", c.cluster_id)
            + _td(
                "-" if c.majority_label is None else str(c.majority_label),
                "majority_label",
                c.cluster_id,
            )
            + _td(fmt_pct(c.purity), "purity", c.cluster_id)
            + _td(fmt_num(c.mean_distance), "mean_distance", c.cluster_id)
            + "</tr>"
        )
    return (
        '<table id="cluster-table"><tr><th class="num">cluster</th>'
        '<th class="num">items</th><th class="num">previous run</th>'
        '<th class="num">share</th><th class="num">most common label</th>'
        '<th class="num">purity</th><th class="num">mean distance</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _member_strip(
    ids: Sequence[str],
    dists: Sequence[float],
    thumbs: dict[str, bytes] | None,
    vectors: dict[str, np.ndarray] | None,
    labels: dict[str, int],
) -> str:
    if not ids:
        return '<p class="muted">none</p>'
    if thumbs is not None:
        figs = []
        for sid, d in zip(ids, dists, strict=True):
            lab = labels.get(sid)
            cap = f"{d:.2f}" + ("" if lab is None or lab < 0 else f" | {lab}")
            figs.append(
                f'<figure><img alt="{_e(sid)}" title="{_e(sid)} (distance {d:.3f}'
                f'{"" if lab is None or lab < 0 else f", label {lab}"})" '
                f'src="{png_data_uri(thumbs[sid])}"><figcaption>{_e(cap)}'
                "</figcaption></figure>"
            )
        return '<div class="thumbs">' + "".join(figs) + "</div>"
    dim = len(next(iter(vectors.values()))) if vectors else 0
    shown = min(dim, 4)
    head = "".join(f'<th class="num">z{i}</th>' for i in range(shown))
    rows = []
    for sid, d in zip(ids, dists, strict=True):
        lab = labels.get(sid)
        v = vectors[sid] if vectors else []
        rows.append(
            f"<tr><td>{_e(sid)}</td>{_td(f'{d:.3f}')}"
            f"{_td('-' if lab is None or lab < 0 else str(lab))}"
            + "".join(_td(f"{v[i]:.3f}") for i in range(shown))
            + "</tr>"
        )
    return (
        '<table><tr><th>item</th><th class="num">distance</th><th class="num">label'
        f"</th>{head}</tr>" + "".join(rows) + "</table>"
    )


def _trend_text(c: ClusterFigures) -> str:
    vals = [fmt_int(v) for _, v in c.trend]
    return " &rarr; ".join(_e(v) for v in vals)


def _cluster_card(
    c: ClusterFigures,
    data: ReportData,
    thumbs: dict[str, bytes] | None,
    vectors: dict[str, np.ndarray] | None,
    labels: dict[str, int],
) -> str:
    lab_txt = ""
    if c.majority_label is not None:
        mix = ", ".join(f"label {lbl}: {cnt:,}" for lbl, cnt in c.top_labels)
        lab_txt = (
            f"<p>Most common label <b>{c.majority_label}</b>: "
            f"<b>{fmt_pct(c.purity)}</b> of its {c.n_labeled:,} labeled items "
            f"({_e(mix)}).</p>"
        )
    elif data.labeled:
        lab_txt = '<p class="muted">None of its items is labeled.</p>'
    pairs = [p for p in data.pairs if c.cluster_id in (p.a, p.b)]
    pair_txt = "".join(f'<p class="note">{_e(p.note)}</p>' for p in pairs)
    trend = ""
    if len(c.trend) > 1:
        trend = f"<p>Size over the last runs: {_trend_text(c)}</p>"
    far = ""
    if c.farthest_ids:
        far = (
            '<p class="sub">The ' + str(len(c.farthest_ids)) + " members farthest from "
            "the center (the least typical; check for mistakes or new kinds of item):</p>"
            + _member_strip(c.farthest_ids, c.farthest_distances, thumbs, vectors, labels)
        )
    return (
        f'<div class="card" id="cluster-{c.cluster_id}"><div class="cl-head">'
        f"<h3>Cluster {c.cluster_id}</h3><span><b>{fmt_int(c.size)}</b> items "
        f"({fmt_pct(c.share)}), mean distance {fmt_num(c.mean_distance)}</span></div>"
        f"{trend}{lab_txt}{pair_txt}"
        f'<p class="sub">The {len(c.nearest_ids)} members nearest to the center (what this '
        "cluster typically holds)"
        + (
            "; caption: distance | label:"
            if thumbs is not None
            else "; z0, z1, ... are their embedding coordinates:"
        )
        + "</p>"
        + _member_strip(c.nearest_ids, c.nearest_distances, thumbs, vectors, labels)
        + far
        + "</div>"
    )


def render_html(
    data: ReportData,
    *,
    thumbnails: ThumbnailFn | None = None,
    embeddings: Any = None,
    labels: Any = None,
    title: str | None = None,
    quality_alert: float = 0.02,
) -> str:
    """The report page as one HTML string.

    ``thumbnails(ids)`` returns one image per sample id ((H, W) or (H, W, 3), uint8 or 0..1
    floats); None (vector data) shows a small table of each member's embedding coordinates
    instead, read from ``embeddings`` (only those rows). ``labels`` (n,) adds the label under
    each member. ``quality_alert`` is the change of a quality figure (0.02 = 2 points) beyond
    which the page calls it better or worse.
    """
    h = data.health
    member_rows = sorted({r for c in data.clusters for r in c.nearest_rows + c.farthest_rows})
    member_ids = [s for c in data.clusters for s in c.nearest_ids + c.farthest_ids]
    row_of = {}
    for c in data.clusters:
        for r, s in zip(
            c.nearest_rows + c.farthest_rows, c.nearest_ids + c.farthest_ids, strict=True
        ):
            row_of[s] = r
    lab_map: dict[str, int] = {}
    if labels is not None:
        lab = np.asarray(labels)
        lab_map = {s: int(lab[row_of[s]]) for s in member_ids}
    thumbs = vectors = None
    if thumbnails is not None:
        uniq = list(dict.fromkeys(member_ids))
        imgs = thumbnails(uniq)
        if len(imgs) != len(uniq):
            raise ValueError(f"thumbnails returned {len(imgs)} images for {len(uniq)} ids")
        thumbs = {s: image_to_png(im) for s, im in zip(uniq, imgs, strict=True)}
    elif embeddings is not None and member_rows:
        z = take_rows(embeddings, np.asarray(member_rows))
        by_row = dict(zip(member_rows, z, strict=True))
        vectors = {s: by_row[row_of[s]] for s in member_ids}
    with tempfile.TemporaryDirectory(prefix="sqflow-report-") as td:
        tmp = Path(td)
        latent = chart_latent(data, tmp)
        conv = chart_convergence(data, tmp)
    sizes = chart_sizes(data)
    trends = chart_trends(data)
    title = title or f"Cluster report, run {data.run_id}"
    meta = []
    if h.dataset:
        meta.append(f"dataset <b>{_e(h.dataset)}</b>")
    if h.encoder_version:
        meta.append(f"encoder <b>{_e(h.encoder_version)}</b>")
    if h.started_at:
        meta.append(f"started {_e(h.started_at)}")
    meta.append(f"report made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    cards = "".join(_cluster_card(c, data, thumbs, vectors, lab_map) for c in data.clusters)
    if data.pairs:
        pair_html = "".join(
            f'<p class="note" data-pair="{p.a}-{p.b}">{_e(p.note)}</p>' for p in data.pairs
        )
    else:
        pair_html = (
            '<p class="ok">No two clusters are close enough together (with mixed '
            "labels) to be easily confused.</p>"
        )
    trend_img = (
        f'<img class="chart" alt="cluster size trends" src="{png_data_uri(trends)}">'
        if trends
        else '<p class="muted">No earlier run to compare with yet: trends appear from the '
        "second run on.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body data-run-id="{_e(data.run_id)}"><main>
<h1>{_e(title)}</h1>
<p class="sub">{" &middot; ".join(meta)}</p>

<div class="card"><h2 style="margin-top:0;border:0">At a glance</h2>{_glance(data, quality_alert)}
</div>

<h2>Can the grouping be trusted? (embedding quality)</h2>
<p class="sub">The items are grouped by their position in a learned "embedding": a short list of
numbers per item in which alike items should be close. These checks use labeled items that were
kept out of the encoder's training, and show whether the embedding kept the meaning of the
labels.</p>
{_quality_table(data, quality_alert)}

<h2>The clusters</h2>
<p class="sub"><b>Items</b>: how many items the cluster holds tonight. <b>Most common label</b>
and <b>purity</b>: among its labeled items, the most frequent label and the share carrying it
(100% = all the same). <b>Mean distance</b>: how tightly its items sit around its center
(smaller = tighter; compare clusters within one run).</p>
{_cluster_table(data)}
<div class="grid2"><img class="chart" alt="cluster sizes" src="{png_data_uri(sizes)}">
<div>{trend_img}</div></div>
<p class="muted">Cluster numbers stay the same from run to run only while the clustering starts
from the previous run's centers (same encoder and number of clusters).</p>

<h2>The map of the items (latent space)</h2>
<p class="sub">Each dot is an item placed by its embedding, coloured by its label (grey =
unlabeled); crosses are the cluster centers with their numbers. Well separated colour blobs
around the crosses mean clear clusters.</p>
<img class="chart" alt="latent space with centers" src="{png_data_uri(latent)}">

<h2>Clusters that are easily confused</h2>
{pair_html}

<h2>Run health</h2>
{_health(data, conv)}

<h2>Each cluster</h2>
{cards}
<p class="muted">Made by sqflow. This page is self-contained: it works offline and can be
mailed or archived as one file.</p>
</main><script>{_SCRIPT}</script></body></html>
"""
