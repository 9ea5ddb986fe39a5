"""The paper's semi-supervised MNIST protocol (PAPER.md sections 4-5), reproduced end to end.

For each setting - a labeled fraction f of every class (0 = label-free) or an exact number of
labels (``label_counts``, e.g. 100 = 10 per class):

1. draw a stratified labeled subset of the training set (optionally a stratified
   ``train_limit`` subset of the 60,000 images, for quick runs); the rest is unlabeled (-1);
2. train the encoder on ALL training images (``train_encoder``: triplet loss on the labeled
   rows, NT-Xent between two augmented views on every row; the mode - "label-free",
   "semi-supervised", "supervised" - follows the labels). Its validation split comes from the
   training images: labeled rows for the triplet loss, held-out unlabeled rows for the label-free
   criterion (NT-Xent of fixed views);
3. embed all training images and the 10,000 test images;
4. fit SQ (K=10, r=3) with each optimizer on all training embeddings: with labels,
   ``init="labels"`` and each test image takes the class of its nearest center (center index =
   class, because ``init="labels"`` seeds center c from class c); label-free, ``init="k-means++"``
   and the clusters are matched to classes on the test set by the Hungarian method
   (``clustering_accuracy``, the usual clustering score; ``nmi`` needs no matching);
5. references on the same embeddings: KMeans (best of 10 k-means++ starts; clusters named by the
   majority label of their labeled training points, or Hungarian-matched when label-free) and a
   k-NN classifier fitted on the labeled training embeddings (the "upper reference"; none
   label-free).

Scores are weighted F1 and accuracy on the test set. Nothing is tuned on the test set: every
choice (epochs, batch, early stopping on a validation split of the training images, k of k-NN,
which optimizer's confusion matrix is drawn = lowest TRAINING objective) is fixed before or made
on training data. The Hungarian matching of the label-free rows uses test labels only to NAME the
clusters for scoring (the standard clustering accuracy), never to choose anything.

The encoder and embeddings of each fraction are cached (``cache_dir``), keyed by every setting
that affects them, so the SQ stage can be rerun without retraining.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .distances import nearest

__all__ = [
    "PaperConfig",
    "run_paper",
    "write_outputs",
    "main",
    "stratified_subset",
    "labeled_mask",
    "quantization_objective",
    "ALL_OPTIMIZERS",
    "Setting",
    "settings_of",
    "hungarian_mapping",
    "clustering_scores",
]

log = logging.getLogger(__name__)

ALL_OPTIMIZERS = ("sgd", "momentum", "nag", "adagrad", "rmsprop", "adam")
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class PaperConfig:
    """Settings of one protocol run (all recorded in the output JSON).

    ``epochs``, ``batch_size``, ``lr`` are the encoder's (paper: 50, 1000, 1e-3);
    ``encoder_max_seconds`` caps each fraction's encoder training (None = no cap);
    ``sq_params`` are passed on to ``StochasticQuantization`` unchanged.
    """

    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    label_counts: tuple[int, ...] = ()
    optimizers: tuple[str, ...] = ALL_OPTIMIZERS
    epochs: int = 50
    batch_size: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-5
    margin: float = 1.0
    latent_dim: int = 3
    val_fraction: float = 0.1
    patience: int = 5
    lr_plateau_factor: float | None = None
    augment: bool = False
    selfsup_weight: float | None = None
    temperature: float = 0.5
    selfsup_space: str = "latent"
    pseudo_labels: dict[str, Any] | None = None
    encoder_max_seconds: float | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    n_clusters: int = 10
    rank: float = 3.0
    sq_params: dict[str, Any] = field(default_factory=dict)
    kmeans_n_init: int = 10
    knn_k: int = 5
    device: str | None = None
    threads: int | None = None
    cache_dir: str | None = "sqflow-output/paper_cache"
    plots: bool = True
    progress: bool = True

    def validate(self) -> None:
        if not self.fractions and not self.label_counts:
            raise ValueError(
                "fractions and label_counts are both empty; give a labeled fraction in [0, 1] "
                "(0 = label-free) or a number of labels"
            )
        for f in self.fractions:
            if not 0 <= f <= 1:
                raise ValueError(f"fraction {f!r} in fractions must lie in [0, 1] (0 = label-free)")
        for n in self.label_counts:
            if not (isinstance(n, int) and n >= 2 * self.n_clusters):
                raise ValueError(
                    f"label count {n!r} in label_counts must be an int >= 2 per class "
                    f"(>= {2 * self.n_clusters})"
                )
        bad = [o for o in self.optimizers if o not in ALL_OPTIMIZERS]
        if bad:
            raise ValueError(f"optimizers {bad} are not known; use any of {list(ALL_OPTIMIZERS)}")
        if self.train_limit is not None and not 100 <= self.train_limit <= 60_000:
            raise ValueError(f"train_limit={self.train_limit!r} must lie in [100, 60000]")
        if self.test_limit is not None and not 100 <= self.test_limit <= 10_000:
            raise ValueError(f"test_limit={self.test_limit!r} must lie in [100, 10000]")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs!r} must be >= 1")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim={self.latent_dim!r} must be an int >= 1 (paper: 3)")


# --------------------------------------------------------------------------- splits & scores


@dataclass(frozen=True)
class Setting:
    """One column of the table: a labeled ``fraction`` of every class, or ``count`` labels in
    all (stratified); ``fraction == 0`` and no count = label-free."""

    fraction: float
    count: int | None = None

    @property
    def tag(self) -> str:
        """Short name for files and cache folders: ``f0.01``, ``n100``."""
        return f"n{self.count}" if self.count is not None else f"f{self.fraction:g}"

    @property
    def label(self) -> str:
        """Column title: ``label-free``, ``100 labels``, ``1% labeled``."""
        if self.count is not None:
            return f"{self.count} labels"
        return "label-free" if self.fraction == 0 else f"{self.fraction:.0%} labeled"


def settings_of(cfg: PaperConfig) -> list[Setting]:
    """The table's columns in order: label-free first, then label counts, then fractions."""
    out = [Setting(0.0)] if 0 in cfg.fractions else []
    out += [Setting(0.0, int(n)) for n in cfg.label_counts]
    out += [Setting(float(f)) for f in cfg.fractions if f != 0]
    return out


def setting_mask(labels: np.ndarray, setting: Setting, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the labeled rows of ``setting`` (all False when label-free)."""
    mask = np.zeros(len(labels), dtype=bool)
    if setting.count is not None:
        mask[stratified_subset(labels, setting.count, rng)] = True
    elif setting.fraction > 0:
        mask = labeled_mask(labels, setting.fraction, rng)
    return mask


def hungarian_mapping(clusters: np.ndarray, y_true: np.ndarray, n_clusters: int) -> np.ndarray:
    """Class of each cluster under the one-to-one matching that maximises agreement with
    ``y_true`` (``scipy.optimize.linear_sum_assignment``); unmatched clusters get -1."""
    from scipy.optimize import linear_sum_assignment

    n_classes = int(max(y_true.max(initial=-1) + 1, n_clusters))
    counts = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(counts, (clusters, y_true), 1)
    rows, cols = linear_sum_assignment(-counts)
    mapping = np.full(n_clusters, -1)
    mapping[rows] = cols
    return mapping


def clustering_scores(clusters: np.ndarray, y_true: np.ndarray, n_clusters: int) -> dict:
    """Label-free scores of cluster ids on labeled test rows: ``clustering_accuracy``
    (Hungarian), ``nmi`` (sklearn, arithmetic normalisation), and weighted F1 / accuracy of the
    Hungarian-named clusters (so the row keeps the fields of the labeled modes)."""
    from sklearn.metrics import normalized_mutual_info_score

    mapping = hungarian_mapping(clusters, y_true, n_clusters)
    pred = mapping[clusters]
    return {
        **_scores(y_true, pred),
        "clustering_accuracy": float(np.mean(pred == y_true)),
        "nmi": float(normalized_mutual_info_score(y_true, clusters)),
    }


def stratified_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` rows keeping each class's share (largest-remainder rounding)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    take = np.floor(exact).astype(int)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: n - take.sum()]] += 1
    parts = [
        rng.permutation(np.flatnonzero(labels == c))[:t] for c, t in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(parts))


def labeled_mask(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask choosing ``fraction`` of every class (at least 2 rows per class)."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = min(len(rows), max(2, int(round(fraction * len(rows)))))
        mask[rng.permutation(rows)[:k]] = True
    return mask


def quantization_objective(z: np.ndarray, centers: np.ndarray, r: float) -> float:
    """``mean_i min_k ||z_i - c_k||^r`` (PAPER.md F with uniform weights), computed in float64."""
    best = nearest(np.asarray(z, dtype=np.float64), centers)[1]
    return float(np.mean(np.sqrt(best) ** r))


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted")),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }


def _majority_names(assign: np.ndarray, y_semi: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Class name of each cluster = majority label of its labeled training members; a cluster
    with no labeled member takes the name of the nearest named center."""
    k = len(centers)
    names = np.full(k, -1)
    for j in range(k):
        lab = y_semi[(assign == j) & (y_semi >= 0)]
        if lab.size:
            names[j] = np.bincount(lab).argmax()
    named = np.flatnonzero(names >= 0)
    for j in np.flatnonzero(names < 0):
        if named.size:
            names[j] = names[named[np.argmin(((centers[named] - centers[j]) ** 2).sum(1))]]
    return names


# --------------------------------------------------------------------------- stages


def _cache_key(cfg: PaperConfig, setting: Setting, data_hash: str, mode: str) -> str:
    keep = {
        k: getattr(cfg, k)
        for k in (
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "margin",
            "latent_dim",
            "val_fraction",
            "patience",
            "encoder_max_seconds",
            "train_limit",
            "seed",
        )
    }
    if cfg.lr_plateau_factor is not None:  # only when set, so older cache keys stay valid
        keep["lr_plateau_factor"] = cfg.lr_plateau_factor
    if cfg.augment:
        keep["augment"] = True
    if mode != "supervised" or cfg.selfsup_weight is not None:
        # the label-free term (PaperConfig: selfsup_weight None = train_encoder's default)
        keep.update(mode=mode, selfsup_weight=cfg.selfsup_weight, temperature=cfg.temperature)
        # only when changed from the defaults, so older cache keys stay valid
        if cfg.selfsup_space != "latent":
            keep["selfsup_space"] = cfg.selfsup_space
        if cfg.pseudo_labels is not None:
            pseudo = _pseudo_for(cfg, mode)
            if pseudo and pseudo.get("source") == "manifold":
                from .embedding.teacher import teacher_ranges

                # the teacher's settings with its defaults filled in: a changed default
                # (spread became "auto") must not reuse an encoder trained under the old one
                pseudo = {**pseudo, "teacher": teacher_ranges(pseudo.get("teacher"))}
            keep["pseudo_labels"] = pseudo
    fraction = setting.fraction if setting.count is None else f"n{setting.count}"
    keep.update(fraction=fraction, data=data_hash)
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def embed_fraction(
    cfg: PaperConfig,
    setting: Setting | float,
    x: np.ndarray,
    y: np.ndarray,
    xt: np.ndarray,
    data_hash: str,
) -> dict[str, Any]:
    """Train (or load from cache) the encoder for one setting and embed train and test.

    ``setting``: a :class:`Setting` or a labeled fraction. Returns ``{"z_train", "z_test",
    "mask", "encoder": {...summary...}}``.
    """
    from .embedding import TripletEncoder, train_encoder, training_mode

    if not isinstance(setting, Setting):
        setting = Setting(float(setting))
    key = setting.fraction if setting.count is None else 1.0 + setting.count
    rng = np.random.default_rng([cfg.seed, int(round(key * 1e6))])
    mask = setting_mask(y, setting, rng)
    y_semi = np.where(mask, y, -1)
    mode = training_mode(y_semi)
    cache = None
    if cfg.cache_dir:
        cache = Path(cfg.cache_dir) / f"{setting.tag}_{_cache_key(cfg, setting, data_hash, mode)}"
        if (cache / "embeddings.npz").is_file() and (cache / "encoder.pt").is_file():
            enc = TripletEncoder.load(cache / "encoder.pt", device=cfg.device)  # hash-verified
            npz = np.load(cache / "embeddings.npz")
            if np.array_equal(npz["mask"], mask):
                log.info("%s: encoder and embeddings reused from %s", setting.label, cache)
                return {
                    "z_train": npz["z_train"],
                    "z_test": npz["z_test"],
                    "mask": mask,
                    "encoder": _encoder_summary(enc, float(npz["embed_seconds"]), cache),
                }
    if cfg.threads:
        import torch

        # set here, not once: sklearn's threadpool limits can reset torch's OpenMP pool
        torch.set_num_threads(cfg.threads)
    enc = train_encoder(
        x,
        y_semi,
        latent_dim=cfg.latent_dim,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        margin=cfg.margin,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        device=cfg.device,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        patience=cfg.patience,
        progress=cfg.progress,
        max_seconds=cfg.encoder_max_seconds,
        lr_plateau_factor=cfg.lr_plateau_factor,
        augment=cfg.augment,
        selfsup_weight=cfg.selfsup_weight,
        temperature=cfg.temperature,
        selfsup_space=cfg.selfsup_space if mode != "supervised" else "latent",
        pseudo_labels=_pseudo_for(cfg, mode),
    )
    t0 = time.perf_counter()
    z_train, z_test = enc.embed(x), enc.embed(xt)
    embed_seconds = time.perf_counter() - t0
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        enc.save(cache / "encoder.pt")
        np.savez(
            cache / "embeddings.npz",
            z_train=z_train,
            z_test=z_test,
            mask=mask,
            embed_seconds=embed_seconds,
        )
    return {
        "z_train": z_train,
        "z_test": z_test,
        "mask": mask,
        "encoder": _encoder_summary(enc, embed_seconds, cache),
    }


def _pseudo_for(cfg: PaperConfig, mode: str) -> dict[str, Any] | None:
    """Self-training settings for one setting: none when every row is labeled (nothing to
    pseudo-label); label-free rows get ``n_clusters`` centers."""
    if cfg.pseudo_labels is None or mode == "supervised":
        return None
    return {"n_clusters": cfg.n_clusters, **cfg.pseudo_labels}


def _encoder_summary(enc: Any, embed_seconds: float, cache: Path | None) -> dict[str, Any]:
    m = enc.metadata
    met = m["metrics"]
    val = [v for v in met["val_knn1_accuracy"] if v is not None and not math.isnan(v)]
    sel = m["params"].get("selfsup") or {}
    return {
        "mode": m.get("mode", "supervised"),
        "n_labeled": m["n_labeled"],
        "n_unlabeled": m.get("n_unlabeled", 0),
        "selfsup_weight": sel.get("weight", 0.0),
        "temperature": sel.get("temperature"),
        "selfsup_space": sel.get("space"),
        "pseudo_labels": m["params"].get("pseudo_labels"),
        "pseudo_labeled_last": (met.get("pseudo_labeled") or [None])[-1],
        "n_train": m["n_train"],
        "n_val": m["n_val"],
        "epochs_run": met["epochs_run"],
        "best_epoch": met["best_epoch"],
        "stop_reason": met["stop_reason"],
        "train_seconds": met["seconds"],
        "mean_epoch_seconds": float(np.mean(met["epoch_seconds"])),
        "val_knn1_accuracy_last": val[-1] if val else None,
        "val_selfsup_loss_best": _at_best(met.get("val_selfsup_loss"), met["best_epoch"]),
        "embed_seconds": embed_seconds,
        "device": m["params"]["device"],
        "checkpoint": str(cache / "encoder.pt") if cache else None,
    }


def _at_best(values: list | None, best_epoch: int) -> float | None:
    if not values or not 1 <= best_epoch <= len(values):
        return None
    v = values[best_epoch - 1]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def fit_sq(
    cfg: PaperConfig, optimizer: str, z: np.ndarray, y_semi: np.ndarray, rank: float | None = None
):
    """Fit ``StochasticQuantization`` (K, r) with one optimizer; (model, seconds).

    ``init="labels"`` when ``y_semi`` has labels, ``"k-means++"`` when it is all -1 (label-free).
    ``rank`` overrides ``cfg.rank`` (used for the r = 2 comparison with KMeans)."""
    from . import StochasticQuantization  # the lead's estimator

    params = {
        "n_clusters": cfg.n_clusters,
        "optimizer": optimizer,
        "rank": cfg.rank if rank is None else rank,
        "init": "labels" if (y_semi >= 0).any() else "k-means++",
        "random_state": cfg.seed,
        **cfg.sq_params,
    }
    est = StochasticQuantization(**params)
    t0 = time.perf_counter()
    est.fit(z, y_semi)
    return est, time.perf_counter() - t0


def _center_classes(est: Any, n_clusters: int) -> np.ndarray:
    """Class of each center: ``init="labels"`` seeds center c from class c (``classes_`` when
    the estimator records them)."""
    classes = getattr(est, "classes_", None)
    return (
        np.asarray(classes)
        if classes is not None and len(classes) == n_clusters
        else np.arange(n_clusters)
    )


def run_paper(
    cfg: PaperConfig,
    plots_dir: str | Path | None = None,
    on_fraction: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the protocol; returns ``{"config", "results", "references", "encoders", "plots"}``.

    ``on_fraction(report_so_far)`` is called after each fraction (the CLI writes its files
    then, so a long run that is stopped still leaves the finished fractions on disk).
    """
    from sklearn.cluster import KMeans
    from sklearn.neighbors import KNeighborsClassifier

    from .datasets import load_mnist
    from .embedding.encoder import data_sha256

    cfg.validate()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t_run = time.perf_counter()
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    if cfg.train_limit is not None and cfg.train_limit < len(x):
        keep = stratified_subset(y, cfg.train_limit, np.random.default_rng(cfg.seed))
        x, y = x[keep], y[keep]
    if cfg.test_limit is not None and cfg.test_limit < len(xt):
        keep = stratified_subset(yt, cfg.test_limit, np.random.default_rng(cfg.seed + 1))
        xt, yt = xt[keep], yt[keep]
    # the cache key must cover the test images too, since their embeddings are cached; the full
    # test set is fixed by its SHA-256 check, so only a subset adds to the key
    data_hash = data_sha256(x, y) + ("" if cfg.test_limit is None else data_sha256(xt))
    results: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    encoders: list[dict[str, Any]] = []
    comparison: list[dict[str, Any]] = []
    plots: list[str] = []
    settings = settings_of(cfg)
    for setting in settings:
        emb = embed_fraction(cfg, setting, x, y, xt, data_hash)
        z, zt, mask = emb["z_train"], emb["z_test"], emb["mask"]
        y_semi = np.where(mask, y, -1)
        label_free = not mask.any()
        mode = emb["encoder"]["mode"]
        # count settings: the exact share of labeled training rows
        fraction = setting.fraction if setting.count is None else float(mask.mean())
        tags = {
            "fraction": fraction,
            "setting": setting.label,
            "n_labeled": int(mask.sum()),
            "mode": mode,
        }
        encoders.append({**tags, **emb["encoder"]})
        log.info("%s: encoder %s", setting.label, emb["encoder"])

        curves, fitted = {}, {}
        for opt in cfg.optimizers:
            est, secs = fit_sq(cfg, opt, z, y_semi)
            centers = np.asarray(est.cluster_centers_, dtype=np.float64)
            if label_free:
                # clusters have no class: matched to classes on the test set (scoring only)
                clusters = nearest(zt, centers)[0]
                scores = clustering_scores(clusters, yt, cfg.n_clusters)
                pred = hungarian_mapping(clusters, yt, cfg.n_clusters)[clusters]
            else:
                pred = _center_classes(est, cfg.n_clusters)[nearest(zt, centers)[0]]
                scores = _scores(yt, pred)
            row = {
                **tags,
                "optimizer": opt,
                **scores,
                "objective": quantization_objective(z, centers, cfg.rank),
                "objective_r2": quantization_objective(z, centers, 2.0),
                "objective_estimator": float(getattr(est, "objective_", float("nan"))),
                "train_seconds": secs,
            }
            results.append(row)
            log.info("fraction %g %s: %s", fraction, opt, row)
            curves[opt] = np.asarray(getattr(est, "loss_curve_", []), dtype=np.float64)
            fitted[opt] = (centers, pred, row["objective"])

        t0 = time.perf_counter()
        km = KMeans(
            n_clusters=cfg.n_clusters,
            init="k-means++",
            n_init=cfg.kmeans_n_init,
            random_state=cfg.seed,
        ).fit(z)
        km_secs = time.perf_counter() - t0
        kc = km.cluster_centers_.astype(np.float64)
        if label_free:
            km_scores = clustering_scores(nearest(zt, kc)[0], yt, cfg.n_clusters)
        else:
            names = _majority_names(km.labels_, y_semi, kc)
            km_scores = _scores(yt, names[nearest(zt, kc)[0]])
        references.append(
            {
                **tags,
                "method": "kmeans",
                "optimizer": "kmeans",
                **km_scores,
                "objective": quantization_objective(z, kc, cfg.rank),
                "objective_r2": quantization_objective(z, kc, 2.0),
                "train_seconds": km_secs,
            }
        )
        # Objective check against KMeans on the same embeddings, two ways: the paper's r fit vs
        # KMeans centers on F_r, and an r = 2 SQ fit vs KMeans on its own objective (inertia / N)
        km_r, km_r2 = references[-1]["objective"], references[-1]["objective_r2"]
        for opt in cfg.optimizers:
            est2, _ = fit_sq(cfg, opt, z, y_semi, rank=2.0)
            sq_r2 = quantization_objective(z, est2.cluster_centers_, 2.0)
            sq_r = next(
                r["objective"]
                for r in results
                if r["setting"] == setting.label and r["optimizer"] == opt
            )
            comparison.append(
                {
                    **tags,
                    "optimizer": opt,
                    "sq_objective_r": sq_r,
                    "kmeans_objective_r": km_r,
                    "gap_r": (sq_r - km_r) / km_r,
                    "sq_objective_r2": sq_r2,
                    "kmeans_objective_r2": km_r2,
                    "gap_r2": (sq_r2 - km_r2) / km_r2,
                }
            )
        if not label_free:  # no labeled training row to fit a k-NN on
            t0 = time.perf_counter()
            k = min(cfg.knn_k, int(mask.sum()))
            knn = KNeighborsClassifier(n_neighbors=k).fit(z[mask], y[mask])
            knn_pred = knn.predict(zt)
            references.append(
                {
                    **tags,
                    "method": f"knn{cfg.knn_k}",
                    "optimizer": "knn",
                    **_scores(yt, knn_pred),
                    "objective": None,
                    "objective_r2": None,
                    "train_seconds": time.perf_counter() - t0,
                }
            )

        if plots_dir is not None and cfg.plots:
            plots += _fraction_plots(Path(plots_dir), setting, z, y_semi, zt, yt, curves, fitted)
        report = {
            "config": _config_json(cfg, len(x), len(xt)),
            "results": results,
            "references": references,
            "encoders": encoders,
            "plots": plots,
            "objective_vs_kmeans": comparison,
            "complete": setting == settings[-1],
            "started_at": started,
            "wall_seconds": time.perf_counter() - t_run,
        }
        if on_fraction is not None:
            on_fraction(report)
    return report


def _fraction_plots(out: Path, setting: Setting, z, y_semi, zt, yt, curves, fitted) -> list[str]:
    from .plots import plot_confusion, plot_convergence, plot_latent

    tag, what = setting.tag, setting.label
    paths = []
    # the optimizer shown is chosen on the TRAINING objective, never on test scores
    best_opt = min(fitted, key=lambda o: fitted[o][2]) if fitted else None
    centers = fitted[best_opt][0] if best_opt else None
    paths.append(
        plot_latent(
            z,
            y_semi,
            out / f"{tag}_latent_train.png",
            centers=centers,
            title=f"train embeddings, {what} (grey = unlabeled); x = SQ-{best_opt} centers",
        )
    )
    paths.append(
        plot_latent(
            zt,
            yt,
            out / f"{tag}_latent_test.png",
            centers=centers,
            title=f"test embeddings ({what} encoder)",
        )
    )
    if any(len(c) for c in curves.values()):
        paths.append(
            plot_convergence(
                curves,
                out / f"{tag}_convergence.png",
                title=f"SQ loss curves, {what}",
            )
        )
    if best_opt:
        paths.append(
            plot_confusion(
                yt,
                fitted[best_opt][1],
                out / f"{tag}_confusion.png",
                title=f"SQ-{best_opt}, {what}, MNIST test",
            )
        )
    return [str(p) for p in paths]


def _config_json(cfg: PaperConfig, n_train: int, n_test: int) -> dict[str, Any]:
    import platform

    import sklearn
    import torch

    d = asdict(cfg)
    d.update(
        fractions=list(cfg.fractions),
        optimizers=list(cfg.optimizers),
        n_train=n_train,
        n_test=n_test,
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
        },
        torch_threads=cfg.threads or torch.get_num_threads(),
        hardware=_hardware(),
        classification="nearest SQ center; center index = class (init='labels')",
        kmeans="sklearn KMeans, k-means++, best of kmeans_n_init starts; clusters named by "
        "majority label of labeled training members",
        knn=f"KNeighborsClassifier(k={cfg.knn_k}) on labeled training embeddings",
        objective="mean_i min_k ||z_i - c_k||^rank on all training embeddings",
    )
    return d


def _hardware() -> dict[str, Any]:
    """Where the run happened: CPU model and count, CUDA device name when one is visible."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# --------------------------------------------------------------------------- output


def markdown_table(report: dict[str, Any]) -> str:
    """Weighted F1 (%) per method and setting, then clustering scores, objectives, encoders."""
    fr = list(dict.fromkeys(_col(r) for r in report["results"] + report["references"]))
    rows: dict[str, dict[str, dict]] = {}
    for r in report["results"]:
        rows.setdefault(f"Triplet + SQ-{r['optimizer']}", {})[_col(r)] = r
    for r in report["references"]:
        name = (
            "Triplet + KMeans (best of 10 k-means++)"
            if r["method"] == "kmeans"
            else f"Triplet + {r['method'].upper()} (labeled train, upper reference)"
        )
        rows.setdefault(name, {})[_col(r)] = r
    if not report.get("complete", True):
        fr_note = "**Partial run: fractions still missing from the requested list.**\n\n"
    else:
        fr_note = ""
    head = "| method | " + " | ".join(fr) + " |"
    sep = "|---|" + "---|" * len(fr)
    first = {}
    for r in report["results"]:
        first.setdefault(_col(r), r)
    out = [
        fr_note
        + f"Weighted F1 on {report['config']['n_test']:,} MNIST test images, percent (accuracy "
        "in brackets). Label-free columns: clusters named by Hungarian matching on the test set.",
        "",
        head,
        sep,
        "| labels (mode) | "
        + " | ".join(
            f"{first[f].get('n_labeled', '?')} ({first[f].get('mode', 'supervised')})"
            if f in first
            else "-"
            for f in fr
        )
        + " |",
    ]
    for name, cells in rows.items():
        vals = [
            f"{100 * cells[f]['f1_weighted']:.2f} ({100 * cells[f]['accuracy']:.2f})"
            if f in cells
            else "-"
            for f in fr
        ]
        out.append(f"| {name} | " + " | ".join(vals) + " |")
    lf = [f for f in fr if any("nmi" in c.get(f, {}) for c in rows.values())]
    if lf:
        out += [
            "",
            "Label-free: clustering accuracy (Hungarian matching of clusters to classes on the "
            "test set), percent, and NMI:",
            "",
            "| method | " + " | ".join(lf) + " |",
            "|---|" + "---|" * len(lf),
        ]
        for name, cells in rows.items():
            if not any(f in cells and "nmi" in cells[f] for f in lf):
                continue
            vals = [
                f"{100 * cells[f]['clustering_accuracy']:.2f}, NMI {cells[f]['nmi']:.3f}"
                if f in cells and "nmi" in cells[f]
                else "-"
                for f in lf
            ]
            out.append(f"| {name} | " + " | ".join(vals) + " |")
    out += [
        "",
        f"Objective F = mean min_k ||z - c_k||^{report['config']['rank']:g} on all "
        "training embeddings (lower is better; SQ vs KMeans on the same embeddings):",
        "",
        head,
        sep,
    ]
    for name, cells in rows.items():
        if "KNN" in name:
            continue
        vals = [
            f"{cells[f]['objective']:.5g}"
            if f in cells and cells[f]["objective"] is not None
            else "-"
            for f in fr
        ]
        out.append(f"| {name} | " + " | ".join(vals) + " |")
    if report.get("objective_vs_kmeans"):
        out += [
            "",
            "SQ objective relative to the best KMeans on the same embeddings, percent "
            "(negative = SQ lower). r: the paper's SQ fit vs KMeans centers, both on F_r; "
            "r=2: an SQ fit with rank 2 vs KMeans on its own objective (inertia / N):",
            "",
            head,
            sep,
        ]
        by = {}
        for c in report["objective_vs_kmeans"]:
            by.setdefault(c["optimizer"], {})[_col(c)] = c
        for opt, cells in by.items():
            vals = [
                f"r: {100 * cells[f]['gap_r']:+.2f}, r=2: {100 * cells[f]['gap_r2']:+.2f}"
                if f in cells
                else "-"
                for f in fr
            ]
            out.append(f"| SQ-{opt} | " + " | ".join(vals) + " |")
    out += [
        "",
        "Encoders:",
        "",
        "| setting | mode | labeled | epochs run (best) | stop | train s | "
        "s/epoch | val 1-NN acc | embed s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["encoders"]:
        va = e["val_knn1_accuracy_last"]
        out.append(
            f"| {_col(e)} | {e.get('mode', 'supervised')} | {e['n_labeled']} | "
            f"{e['epochs_run']} ({e['best_epoch']})"
            f" | {e['stop_reason']} | {e['train_seconds']:.0f} | "
            f"{e['mean_epoch_seconds']:.1f} | {'-' if va is None else f'{va:.4f}'} | "
            f"{e['embed_seconds']:.1f} |"
        )
    c = report["config"]
    out += [
        "",
        f"Config: latent_dim={c.get('latent_dim', 3)}, epochs={c['epochs']}, batch={c['batch_size']}, lr={c['lr']}, "
        f"patience={c['patience']}, lr_plateau={c.get('lr_plateau_factor')}, augment={c.get('augment', False)}, "
        f"selfsup_weight={c.get('selfsup_weight')} (None: 1 with unlabeled rows, else 0), temperature={c.get('temperature')}, selfsup_space={c.get('selfsup_space', 'latent')}, pseudo_labels={c.get('pseudo_labels')}, encoder_max_seconds={c['encoder_max_seconds']}, "
        f"train_limit={c['train_limit']} (n_train={c['n_train']}), n_test={c['n_test']}, seed={c['seed']}, "
        f"sq_params={c['sq_params']}, torch threads={c['torch_threads']}.",
    ]
    hw = c.get("hardware")
    if hw:
        dev = sorted({e.get("device", "?") for e in report["encoders"]})
        out.append(
            f"Ran on: encoder device {', '.join(dev)}; CPU {hw['cpu']} x {hw['cpu_count']}"
            f"{'; GPU ' + hw['cuda_device'] if hw.get('cuda_device') else ''}; started "
            f"{report.get('started_at', '?')}, {report.get('wall_seconds', 0):.0f} s wall "
            "for the whole table."
        )
    return "\n".join(out) + "\n"


def _col(r: dict[str, Any]) -> str:
    """Column of a result row: its setting, or (older reports) its labeled fraction."""
    return r.get("setting") or f"{r['fraction']:.0%} labeled"


def _json_clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_path(out: str | Path) -> Path:
    """``out`` as the results file: ``.json`` appended when it has another ending (or none),
    so that the Markdown table and the plots beside it never take the place of another file
    ("run.v2" -> "run.v2.json", table "run.v2.md")."""
    out = Path(out)
    return out if out.suffix == ".json" else out.with_name(out.name + ".json")


def write_outputs(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` (JSON; see :func:`json_path`) and the Markdown table beside it (same
    stem, ``.md``)."""
    out = json_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_clean(report), indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text("# Paper table (PAPER.md sections 4-5)\n\n" + markdown_table(report))
    return out, md


# --------------------------------------------------------------------------- CLI


def _parse_sq_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"--sq-param {text!r}: use KEY=VALUE, e.g. max_iter=200000"
        )
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sqflow paper",
        description="Reproduce the paper's semi-supervised MNIST table (Triplet encoder + SQ).",
    )
    p.add_argument(
        "--fractions",
        type=float,
        nargs="*",
        default=list(DEFAULT_FRACTIONS),
        help="labeled fractions of the training set, 0 = label-free (default: 0.25 0.5 0.75 1.0)",
    )
    p.add_argument(
        "--label-counts",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="exact numbers of labels, stratified (e.g. 100 = 10 per class)",
    )
    p.add_argument(
        "--selfsup-weight",
        type=float,
        default=None,
        help="weight of the label-free NT-Xent term (default: 1 with unlabeled rows, else 0)",
    )
    p.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature")
    p.add_argument(
        "--selfsup-space",
        choices=["latent", "hidden"],
        default="latent",
        help="NT-Xent on the latent itself, or on a projection head over the last hidden layer",
    )
    p.add_argument(
        "--pseudo-labels",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="self-training: pseudo-labels from the manifold teacher (UMAP + Gaussian mixture "
        'on the CNN features), e.g. \'{"source": "manifold", "start_epoch": 5}\', or from '
        'confident SQ assignments of the embedding, \'{"start_epoch": 5, "keep": 0.5}\'',
    )
    p.add_argument(
        "--optimizers",
        nargs="+",
        default=list(ALL_OPTIMIZERS),
        choices=list(ALL_OPTIMIZERS),
        help="SQ optimizers (default: all six)",
    )
    p.add_argument("--epochs", type=int, default=50, help="encoder epochs (paper: 50)")
    p.add_argument("--batch-size", type=int, default=1000, help="encoder batch (paper: 1000)")
    p.add_argument("--lr", type=float, default=1e-3, help="encoder Adam learning rate")
    p.add_argument(
        "--latent-dim",
        type=int,
        default=3,
        help="embedding dimension (paper: 3; wider latents are a second table)",
    )
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (epochs)")
    p.add_argument(
        "--lr-plateau",
        type=float,
        default=None,
        metavar="FACTOR",
        help="multiply the encoder lr by FACTOR when validation loss plateaus",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="random rotation (+-10 deg) and shift (+-8 %%) of training batches",
    )
    p.add_argument(
        "--encoder-max-seconds",
        type=float,
        default=None,
        help="wall-clock cap per fraction's encoder training",
    )
    p.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="stratified subset of N training images (quick runs)",
    )
    p.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="stratified subset of N test images (quick runs only; the table uses all)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the label split and the models (default 0)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if present)")
    p.add_argument(
        "--sq-param",
        type=_parse_sq_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra StochasticQuantization parameter (repeatable)",
    )
    p.add_argument(
        "--cache-dir",
        default="sqflow-output/paper_cache",
        help="encoder/embedding cache ('' disables)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG files")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--out",
        default="bench/results/paper_table.json",
        help="JSON output; the .md table and a <stem>_plots/ folder go beside it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry (``sqflow paper ...`` / ``python bench/paper_table.py ...``); returns 0."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = PaperConfig(
        fractions=tuple(args.fractions),
        label_counts=tuple(args.label_counts),
        selfsup_weight=args.selfsup_weight,
        temperature=args.temperature,
        selfsup_space=args.selfsup_space,
        pseudo_labels=args.pseudo_labels,
        optimizers=tuple(args.optimizers),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        latent_dim=args.latent_dim,
        patience=args.patience,
        lr_plateau_factor=args.lr_plateau,
        augment=args.augment,
        encoder_max_seconds=args.encoder_max_seconds,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        sq_params=dict(args.sq_param),
        cache_dir=args.cache_dir or None,
        plots=not args.no_plots,
        progress=not args.quiet,
    )
    out = json_path(args.out)
    report = run_paper(
        cfg,
        plots_dir=out.parent / f"{out.stem}_plots",
        on_fraction=lambda rep: write_outputs(rep, out),
    )
    js, md = write_outputs(report, out)
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0
