"""The figures of the cluster report, computed from one run's data (no Prefect, no I/O).

Everything here takes plain arrays (or array-likes that can be sliced: NumPy, Zarr, Dask) and
returns plain Python data, so the same figures end up on the HTML page, in the Prefect
artifacts and in the ``cluster_report`` BI table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..distances import nearest

__all__ = [
    "HeldOut",
    "RunHealth",
    "PreviousRun",
    "ClusterFigures",
    "ConfusedPair",
    "Quality",
    "ReportData",
    "compute_report",
    "take_rows",
]

#: Quality figures shown with the previous run's value beside them (key -> plain title).
QUALITY_KEYS = ("knn_accuracy", "majority_agreement", "trustworthiness")


@dataclass
class HeldOut:
    """The labeled items held out from encoder training, used to judge the embedding.

    ``embeddings`` (m, d) and ``labels`` (m,) are required; ``inputs`` (m, ...) are the original
    items (pixels or feature vectors) for trustworthiness (None: trustworthiness is not
    computed). ``cluster_ids`` (m,) are their assigned clusters (None: nearest center).
    ``note``: a caveat shown beside the figures (e.g. the hold-out may overlap training).
    """

    embeddings: Any
    labels: Any
    inputs: Any | None = None
    cluster_ids: Any | None = None
    note: str | None = None


@dataclass
class RunHealth:
    """How the run went. ``drift`` None means the monitor did not run (shown as such, never
    as "no drift"); otherwise a mapping with ``drifted`` (bool or None), ``status``,
    ``reasons`` (list of text) and ``statistics`` (list of row dicts: statistic, value,
    threshold, p_value, drifted)."""

    drift: Mapping[str, Any] | None = None
    monitor_note: str | None = None
    n_items: int | None = None
    n_quarantined: int = 0
    quarantine_reasons: Mapping[str, int] = field(default_factory=dict)
    objective: float | None = None
    loss_curve: Sequence[float] = ()
    loss_curve_label: str = "block of samples"
    n_passes: int | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    dataset: str | None = None
    encoder_version: str | None = None
    started_at: str | None = None
    warm_start_from: str | None = None


@dataclass
class PreviousRun:
    """What an earlier run reported: ``sizes[cluster_id]`` and the quality figures
    (None when that run could not compute one)."""

    run_id: str
    sizes: Mapping[int, int]
    knn_accuracy: float | None = None
    majority_agreement: float | None = None
    trustworthiness: float | None = None


@dataclass
class ClusterFigures:
    cluster_id: int
    size: int
    share: float
    mean_distance: float | None
    majority_label: int | None
    purity: float | None
    n_labeled: int
    top_labels: list[tuple[int, int]]  # (label, count), most frequent first
    nearest_rows: list[int]
    nearest_ids: list[str]
    nearest_distances: list[float]
    farthest_rows: list[int]
    farthest_ids: list[str]
    farthest_distances: list[float]
    trend: list[tuple[str, int | None]]  # (run_id, size) oldest first, this run last


@dataclass
class ConfusedPair:
    a: int
    b: int
    center_distance: float
    closeness: float  # center distance / (mean distance of a + mean distance of b)
    label_overlap: float | None  # histogram intersection of the two label mixes, 0..1
    shared_labels: list[int]
    note: str


@dataclass
class Quality:
    knn_accuracy: float | None = None
    majority_agreement: float | None = None
    trustworthiness: float | None = None
    n_heldout: int = 0
    knn_k: int = 5
    trust_k: int = 5
    previous: dict[str, float | None] = field(default_factory=dict)
    previous_run_id: str | None = None
    note: str | None = None


@dataclass
class ReportData:
    run_id: str
    n_items: int
    dim: int
    k: int
    clusters: list[ClusterFigures]
    pairs: list[ConfusedPair]
    quality: Quality
    health: RunHealth
    centers: np.ndarray
    plot_rows: np.ndarray  # sorted row indices drawn in the latent picture
    plot_embeddings: np.ndarray
    plot_labels: np.ndarray | None
    labeled: bool
    previous_run_ids: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able figures (no arrays of embeddings)."""
        return {
            "run_id": self.run_id,
            "n_items": self.n_items,
            "dim": self.dim,
            "k": self.k,
            "clusters": [asdict(c) for c in self.clusters],
            "pairs": [asdict(p) for p in self.pairs],
            "quality": asdict(self.quality),
            "centers": self.centers.tolist(),
            "previous_run_ids": list(self.previous_run_ids),
        }


# ------------------------------------------------------------------------------ helpers
def take_rows(array: Any, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of a NumPy / Zarr / Dask / callable source, as float64.

    A callable is called as ``array(rows)``. Only these rows are read, so a store with
    millions of rows is never loaded whole."""
    rows = np.asarray(rows, dtype=np.int64)
    if callable(array) and not hasattr(array, "shape"):
        out = array(rows)
    elif isinstance(array, np.ndarray):
        out = array[rows]
    elif hasattr(array, "oindex"):  # zarr
        out = array.oindex[rows]
    elif hasattr(array, "compute"):  # dask
        out = array[rows].compute()
    else:
        out = np.asarray(array)[rows]
    return np.asarray(out, dtype=np.float64)


def _check_1d(name: str, a: Any, n: int | None, dtype: Any = None) -> np.ndarray:
    a = np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(
            f"{name} must be one-dimensional (one value per item); got shape {a.shape}"
        )
    if n is not None and len(a) != n:
        raise ValueError(
            f"{name} has {len(a)} values but there are {n} items; give one "
            "value per row of the embeddings"
        )
    return a


def knn_accuracy(z: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy: for each item, the majority label of its
    ``k`` nearest other items (Euclidean, ties to the smallest label) equals its own."""
    from sklearn.neighbors import NearestNeighbors

    n = len(z)
    if n < 2:
        raise ValueError(f"kNN accuracy needs at least 2 labeled items; got {n}")
    k = min(k, n - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(z)
    _, idx = nn.kneighbors(z)
    # drop the item itself (the first neighbour unless duplicates tie with it)
    neigh = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        row = idx[i][idx[i] != i][:k]
        neigh[i] = row
    votes = labels[neigh]
    n_lab = int(labels.max()) + 1
    counts = np.zeros((n, n_lab), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), k), votes.ravel()), 1)
    pred = counts.argmax(1)
    return float(np.mean(pred == labels))


def _fmt_labels(labels: Sequence[int]) -> str:
    labels = [str(v) for v in labels]
    if len(labels) <= 1:
        return "".join(labels)
    return ", ".join(labels[:-1]) + " and " + labels[-1]


# ------------------------------------------------------------------------------ compute
def compute_report(
    run_id: str,
    *,
    embeddings: Any,
    cluster_ids: Any,
    distances: Any,
    centers: Any,
    sample_ids: Sequence[str] | np.ndarray,
    labels: Any | None = None,
    heldout: HeldOut | None = None,
    heldout_note: str | None = None,
    previous: Sequence[PreviousRun] = (),
    health: RunHealth | None = None,
    n_nearest: int = 16,
    n_farthest: int = 8,
    knn_k: int = 5,
    trust_k: int = 5,
    max_heldout: int = 2000,
    max_plot_points: int = 8000,
    closeness_limit: float = 1.0,
    overlap_limit: float = 0.25,
    max_pairs: int = 8,
    random_state: int = 0,
) -> ReportData:
    """Compute every figure of the cluster report.

    Parameters
    ----------
    embeddings : (n, d) array-like (NumPy, Zarr array, Dask array, or a callable
        ``rows -> array``); only ``max_plot_points`` rows are read (for the picture).
    cluster_ids, distances : (n,) assigned cluster and Euclidean distance to its center.
    centers : (k, d) cluster centers.
    sample_ids : (n,) item ids (shown under the thumbnails, kept in the BI table).
    labels : (n,) known labels, -1 for unlabeled; None when nothing is labeled.
    heldout : labeled items held out from encoder training (embedding quality); None to skip.
    heldout_note : with ``heldout=None``, why there is no hold-out (shown instead of figures).
    previous : earlier runs, oldest first (trends, "previous value" beside each figure).
    health : run health (drift, quarantine, objective, convergence, timings).
    n_nearest, n_farthest : members shown per cluster (nearest to / farthest from the center).
    knn_k, trust_k : neighbours for kNN accuracy and for trustworthiness.
    max_heldout : the hold-out is subsampled to this many rows (trustworthiness is O(m^2)).
    closeness_limit, overlap_limit : a pair of clusters is flagged as often confused when
        center distance / (sum of the two mean distances) < ``closeness_limit`` and, where
        labels exist, their label mixes overlap by at least ``overlap_limit`` (0..1).
    """
    centers = np.asarray(centers, dtype=np.float64)
    if centers.ndim != 2 or len(centers) == 0:
        raise ValueError(f"centers must have shape (k, d) with k >= 1; got {centers.shape}")
    k, dim = centers.shape
    cid = _check_1d("cluster_ids", cluster_ids, None).astype(np.int64)
    n = len(cid)
    if n == 0:
        raise ValueError("the run has no items (cluster_ids is empty)")
    if cid.min() < 0 or cid.max() >= k:
        raise ValueError(
            f"cluster_ids must lie in 0..{k - 1} (k = {len(centers)} centers); "
            f"got {cid.min()}..{cid.max()}"
        )
    dist = _check_1d("distances", distances, n, np.float64)
    if not np.all(np.isfinite(dist)) or dist.min() < 0:
        raise ValueError("distances must be finite and >= 0")
    ids = np.array([str(s) for s in np.asarray(sample_ids).tolist()], dtype=object)
    _check_1d("sample_ids", ids, n)
    emb_shape = getattr(embeddings, "shape", None)
    if emb_shape is not None and (len(emb_shape) != 2 or emb_shape[0] != n or emb_shape[1] != dim):
        raise ValueError(
            f"embeddings must have shape ({n}, {dim}) to match cluster_ids and "
            f"centers; got {tuple(emb_shape)}"
        )
    lab = None if labels is None else _check_1d("labels", labels, n).astype(np.int64)
    labeled = lab is not None and bool((lab >= 0).any())
    health = health or RunHealth()
    previous = list(previous)

    sizes = np.bincount(cid, minlength=k)
    order = np.lexsort((dist, cid))  # by cluster, then by distance
    starts = np.concatenate([[0], np.cumsum(sizes)])
    clusters: list[ClusterFigures] = []
    label_mix: list[dict[int, int]] = []
    for j in range(k):
        members = order[starts[j] : starts[j + 1]]
        near = members[:n_nearest]
        far = members[::-1][:n_farthest] if len(members) > n_nearest else members[:0]
        mix: dict[int, int] = {}
        maj = pur = None
        n_lab = 0
        if labeled:
            lj = lab[members]
            lj = lj[lj >= 0]
            n_lab = int(lj.size)
            if lj.size:
                vals, cnt = np.unique(lj, return_counts=True)
                mix = {int(v): int(c) for v, c in zip(vals, cnt, strict=True)}
                maj = int(vals[np.argmax(cnt)])  # ties: the smallest label (np.unique order)
                pur = float(cnt.max() / lj.size)
        label_mix.append(mix)
        trend = [
            (p.run_id, (None if p.sizes.get(j) is None else int(p.sizes[j]))) for p in previous
        ] + [(run_id, int(sizes[j]))]
        clusters.append(
            ClusterFigures(
                cluster_id=j,
                size=int(sizes[j]),
                share=float(sizes[j] / n),
                mean_distance=float(dist[members].mean()) if len(members) else None,
                majority_label=maj,
                purity=pur,
                n_labeled=n_lab,
                top_labels=sorted(mix.items(), key=lambda kv: (-kv[1], kv[0]))[:3],
                nearest_rows=[int(r) for r in near],
                nearest_ids=[str(ids[r]) for r in near],
                nearest_distances=[float(dist[r]) for r in near],
                farthest_rows=[int(r) for r in far],
                farthest_ids=[str(ids[r]) for r in far],
                farthest_distances=[float(dist[r]) for r in far],
                trend=trend,
            )
        )

    pairs = _confused_pairs(
        centers, clusters, label_mix, labeled, closeness_limit, overlap_limit, max_pairs
    )
    quality = _quality(
        heldout,
        centers,
        clusters,
        previous,
        knn_k,
        trust_k,
        max_heldout,
        random_state,
        heldout_note,
    )

    rng = np.random.default_rng(random_state)
    plot_rows = (
        np.arange(n)
        if n <= max_plot_points
        else np.sort(rng.choice(n, size=max_plot_points, replace=False))
    )
    plot_z = take_rows(embeddings, plot_rows)
    if plot_z.shape != (len(plot_rows), dim):
        raise ValueError(f"embeddings rows have shape {plot_z.shape[1:]}, expected ({dim},)")
    if health.n_items is None:
        health.n_items = n
    return ReportData(
        run_id=run_id,
        n_items=n,
        dim=dim,
        k=k,
        clusters=clusters,
        pairs=pairs,
        quality=quality,
        health=health,
        centers=centers,
        plot_rows=plot_rows,
        plot_embeddings=plot_z,
        plot_labels=None if lab is None else lab[plot_rows],
        labeled=labeled,
        previous_run_ids=[p.run_id for p in previous],
    )


def _confused_pairs(
    centers: np.ndarray,
    clusters: list[ClusterFigures],
    mixes: list[dict[int, int]],
    labeled: bool,
    closeness_limit: float,
    overlap_limit: float,
    max_pairs: int,
) -> list[ConfusedPair]:
    k = len(centers)
    out: list[ConfusedPair] = []
    for a in range(k):
        for b in range(a + 1, k):
            ca, cb = clusters[a], clusters[b]
            if not ca.size or not cb.size:
                continue
            dcen = float(np.linalg.norm(centers[a] - centers[b]))
            spread = (ca.mean_distance or 0.0) + (cb.mean_distance or 0.0)
            closeness = dcen / spread if spread > 0 else math.inf
            if closeness >= closeness_limit:
                continue
            overlap = None
            shared: list[int] = []
            if labeled and mixes[a] and mixes[b]:
                na, nb = sum(mixes[a].values()), sum(mixes[b].values())
                keys = set(mixes[a]) | set(mixes[b])
                parts = {
                    lbl: min(mixes[a].get(lbl, 0) / na, mixes[b].get(lbl, 0) / nb) for lbl in keys
                }
                overlap = float(sum(parts.values()))
                if overlap < overlap_limit:
                    continue  # close, but their labels are clearly different
                shared = [
                    lbl for lbl, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= 0.05
                ][:3]
            ratio_txt = f"{closeness:.2f}"
            if overlap is None:
                note = (
                    f"Clusters {a} and {b} lie close together: their centers are "
                    f"{dcen:.3g} apart, only {ratio_txt} times their typical spread. "
                    "No labels to check whether they hold the same kind of item; look at "
                    "both together."
                )
            else:
                note = (
                    f"Clusters {a} and {b} are easily confused: their centers are "
                    f"{dcen:.3g} apart, only {ratio_txt} times their typical spread, and "
                    f"{overlap:.0%} of their label mix is the same (mostly label"
                    f"{'s' if len(shared) > 1 else ''} {_fmt_labels(shared)}). Items near "
                    "the border of the two may land in either; review them together."
                )
            out.append(ConfusedPair(a, b, dcen, closeness, overlap, shared, note))
    out.sort(key=lambda p: p.closeness)
    return out[:max_pairs]


def _quality(
    heldout: HeldOut | None,
    centers: np.ndarray,
    clusters: list[ClusterFigures],
    previous: list[PreviousRun],
    knn_k: int,
    trust_k: int,
    max_heldout: int,
    random_state: int,
    heldout_note: str | None = None,
) -> Quality:
    q = Quality(knn_k=knn_k, trust_k=trust_k)
    if previous:
        last = previous[-1]
        q.previous_run_id = last.run_id
        q.previous = {key: getattr(last, key) for key in QUALITY_KEYS}
    if heldout is None:
        q.note = heldout_note or (
            "no labeled hold-out was given, so the embedding quality was not measured"
        )
        return q
    q.note = heldout.note
    z = np.asarray(heldout.embeddings, dtype=np.float64)
    y = _check_1d("heldout.labels", heldout.labels, None).astype(np.int64)
    if z.ndim != 2 or len(z) != len(y) or z.shape[1] != centers.shape[1]:
        raise ValueError(
            f"heldout.embeddings must have shape ({len(y)}, {centers.shape[1]}); got {z.shape}"
        )
    keep = np.flatnonzero(y >= 0)
    if len(keep) > max_heldout:
        keep = np.sort(np.random.default_rng(random_state).choice(keep, max_heldout, replace=False))
    if len(keep) < 2:
        q.note = (
            f"the labeled hold-out has {len(keep)} labeled item(s); at least 2 are needed "
            "to measure the embedding quality"
        )
        return q
    z, y = z[keep], y[keep]
    q.n_heldout = len(keep)
    q.knn_accuracy = knn_accuracy(z, y, knn_k)
    cl = (
        nearest(z, centers)[0]
        if heldout.cluster_ids is None
        else _check_1d("heldout.cluster_ids", heldout.cluster_ids, None).astype(np.int64)[keep]
    )
    maj = np.array([-2 if c.majority_label is None else c.majority_label for c in clusters])
    q.majority_agreement = float(np.mean(maj[cl] == y))
    if heldout.inputs is not None:
        from sklearn.manifold import trustworthiness

        x = np.asarray(heldout.inputs)
        if len(x) != len(heldout.labels):
            raise ValueError(
                f"heldout.inputs has {len(x)} rows but heldout.labels has {len(heldout.labels)}"
            )
        x = x[keep].reshape(len(keep), -1).astype(np.float64)
        tk = min(trust_k, len(keep) // 2 - 1)
        if tk >= 1:
            q.trust_k = tk
            q.trustworthiness = float(trustworthiness(x, z, n_neighbors=tk))
    else:
        q.note = "; ".join(
            filter(
                None,
                [q.note, "the original inputs of the hold-out were not given: no trustworthiness"],
            )
        )
    return q


def summarise_previous(frame: Any, run_id: str) -> PreviousRun:
    """A :class:`PreviousRun` from that run's ``cluster_report`` frame (see
    :func:`sqflow.report.cluster_table`)."""
    import pandas as pd

    df = frame
    first = df.iloc[0] if len(df) else None

    def val(col: str) -> float | None:
        if first is None or col not in df.columns:
            return None
        v = first[col]
        return None if pd.isna(v) else float(v)

    return PreviousRun(
        run_id=run_id,
        sizes={int(c): int(s) for c, s in zip(df["cluster_id"], df["size"], strict=True)},
        knn_accuracy=val("knn_accuracy"),
        majority_agreement=val("majority_agreement"),
        trustworthiness=val("trustworthiness"),
    )


ThumbnailFn = Callable[[Sequence[str]], Sequence[np.ndarray]]
