"""The cluster report as one self-contained HTML page (no CDN, no web fonts, no external files).

The page itself is the Jinja2 template ``templates/report.html.j2`` (with ``report.css`` and
``report.js``), rendered with autoescape on; change the wording or layout there. This module
draws the charts, turns images into PNGs and hands both to the template.

Every picture is a PNG embedded as a ``data:image/png;base64,...`` URI: the charts (drawn with
matplotlib through :mod:`sqflow.plots` where a helper exists) and the item thumbnails. Numbers
that a test or a reader may want to check carry ``data-field`` / ``data-cluster`` attributes.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from .compute import ReportData, ThumbnailFn, take_rows

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


#: colours of the channels in a series thumbnail (cycled past the tenth channel)
SERIES_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def series_to_png(series: np.ndarray, size: tuple[int, int] = (112, 56)) -> bytes:
    """PNG bytes of a small line plot of one time series ``(T, C)`` (or ``(T,)``): one line per
    channel (at most 12), each channel scaled to the plot height on its own (the shape is what a
    reader compares; the values are in the data). ``size`` = (width, height) in pixels."""
    from PIL import Image, ImageDraw

    a = np.asarray(series, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] < 1:
        raise ValueError(f"a series thumbnail must be (T, C) or (T,); got shape {a.shape}")
    w, h = size
    im = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    t = a.shape[0]
    xs = np.linspace(1, w - 2, t) if t > 1 else np.array([w / 2])
    for c in range(min(a.shape[1], 12)):
        v = np.nan_to_num(a[:, c])
        lo, hi = float(v.min()), float(v.max())
        ys = (
            (h - 3) - (v - lo) / (hi - lo if hi > lo else 1.0) * (h - 5)
            if hi > lo
            else v * 0 + h / 2
        )
        pts = list(zip(xs.tolist(), ys.tolist(), strict=True))
        colour = SERIES_COLOURS[c % len(SERIES_COLOURS)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=1)
        else:
            draw.point(pts, fill=colour)
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


def chart_k_selection(selection: dict[str, Any]) -> bytes:
    """The criterion that chose K against K, the chosen K marked.

    ``selection`` is ``sqflow.model_selection.KSelection.as_dict()`` (keys ``k_values``,
    ``scores``, ``criterion``, ``n_clusters``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ks, scores = selection["k_values"], selection["scores"]
    ax.plot(ks, scores, marker="o", lw=1.2, color="tab:blue")
    ax.axvline(selection["n_clusters"], color="tab:red", ls="--", lw=1, label="chosen K")
    ax.set_xlabel("number of clusters K")
    ax.set_ylabel(str(selection["criterion"]).replace("_", "-"))
    ax.set_title("Choosing the number of clusters (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _fig_png(fig)


# ------------------------------------------------------------------------------ page template
TEMPLATES = Path(__file__).resolve().parent / "templates"
PAGE_TEMPLATE = "report.html.j2"


def _to_float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _drift_decision(drifted: Any) -> str:
    return {True: "drift detected", False: "no drift", None: "no decision"}.get(
        drifted, str(drifted)
    )


def _yes_no(drifted: Any) -> str:
    return {True: "yes", False: "no"}.get(drifted, "n/a")


@functools.cache
def page_environment() -> jinja2.Environment:
    """The Jinja2 environment of the report page: templates from ``templates/`` (shipped as
    package data), autoescape on for every template, the number formatters as filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the render, not the reader
    )
    env.filters.update(pct=fmt_pct, int_=fmt_int, num=fmt_num, to_float=_to_float)
    env.globals.update(
        fmt_pct=fmt_pct,
        fmt_num=fmt_num,
        quality_text=QUALITY_TEXT,
        drift_decision=_drift_decision,
        yes_no=_yes_no,
    )
    return env


def render_html(
    data: ReportData,
    *,
    thumbnails: ThumbnailFn | None = None,
    embeddings: Any = None,
    labels: Any = None,
    title: str | None = None,
    quality_alert: float = 0.02,
    k_selection: dict[str, Any] | None = None,
    item_kind: str = "image",
) -> str:
    """The report page as one HTML string.

    ``thumbnails(ids)`` returns one image per sample id ((H, W) or (H, W, 3), uint8 or 0..1
    floats); None (vector data) shows a small table of each member's embedding coordinates
    instead, read from ``embeddings`` (only those rows). ``labels`` (n,) adds the label under
    each member. ``quality_alert`` is the change of a quality figure (0.02 = 2 points) beyond
    which the page calls it better or worse. ``k_selection``: when K was chosen from the data,
    ``KSelection.as_dict()`` of :func:`sqflow.model_selection.select_n_clusters`; the page then
    shows the criterion's curve under Run health. ``item_kind="timeseries"``: ``thumbnails``
    returns series ``(T, C)``, drawn as small line plots (:func:`series_to_png`).
    """
    if item_kind not in ("image", "timeseries"):
        raise ValueError(f"item_kind={item_kind!r}; valid: 'image' or 'timeseries'")
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
        to_png = series_to_png if item_kind == "timeseries" else image_to_png
        thumbs = {s: to_png(im) for s, im in zip(uniq, imgs, strict=True)}
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
    charts = {
        "latent": png_data_uri(latent),
        "sizes": png_data_uri(sizes),
        "trends": png_data_uri(trends) if trends else None,
        "convergence": png_data_uri(conv) if conv else None,
        "k_selection": png_data_uri(chart_k_selection(k_selection)) if k_selection else None,
    }
    thumb_uris = None if thumbs is None else {s: png_data_uri(p) for s, p in thumbs.items()}
    return (
        page_environment()
        .get_template(PAGE_TEMPLATE)
        .render(
            data=data,
            h=h,
            q=data.quality,
            title=title or f"Cluster report, run {data.run_id}",
            meta_time=f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
            alert=quality_alert,
            charts=charts,
            thumbs=thumb_uris,
            vectors=vectors,
            labels=lab_map,
            k_selection=k_selection,
            item_kind=item_kind,
        )
    )
