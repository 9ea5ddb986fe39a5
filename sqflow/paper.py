"""The paper's semi-supervised MNIST protocol (PAPER.md sections 4-5), reproduced end to end.

For each labeled fraction f:

1. draw a stratified labeled subset (share f of every class) of the training set (optionally a
   stratified ``train_limit`` subset of the 60,000 images, for quick runs);
2. train the triplet encoder on the labeled part only (validation split carved from it);
3. embed all training images (labeled and unlabeled) and the 10,000 test images;
4. fit SQ (K=10, r=3, init="labels") with each optimizer on all training embeddings (labels of
   the unlabeled part hidden as -1); classify each test image by its nearest center
   (center index = class, because ``init="labels"`` seeds center c from class c);
5. references on the same embeddings: KMeans (best of 10 k-means++ starts; clusters named by the
   majority label of their labeled training points) and a k-NN classifier fitted on the labeled
   training embeddings (the "upper reference").

Scores are weighted F1 and accuracy on the test set. Nothing is tuned on the test set: every
choice (epochs, batch, early stopping on a labeled validation split, k of k-NN, which optimizer's
confusion matrix is drawn = lowest TRAINING objective) is fixed before or made on training data.

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
        if not self.fractions:
            raise ValueError("fractions is empty; give at least one labeled fraction in (0, 1]")
        for f in self.fractions:
            if not 0 < f <= 1:
                raise ValueError(f"fraction {f!r} in fractions must lie in (0, 1]")
        bad = [o for o in self.optimizers if o not in ALL_OPTIMIZERS]
        if bad:
            raise ValueError(f"optimizers {bad} are not known; use any of {list(ALL_OPTIMIZERS)}")
        if self.train_limit is not None and not 100 <= self.train_limit <= 60_000:
            raise ValueError(f"train_limit={self.train_limit!r} must lie in [100, 60000]")
        if self.test_limit is not None and not 100 <= self.test_limit <= 10_000:
            raise ValueError(f"test_limit={self.test_limit!r} must lie in [100, 10000]")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs!r} must be >= 1")


# --------------------------------------------------------------------------- splits & scores


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


def _cache_key(cfg: PaperConfig, fraction: float, data_hash: str) -> str:
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
    keep.update(fraction=fraction, data=data_hash)
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def embed_fraction(
    cfg: PaperConfig,
    fraction: float,
    x: np.ndarray,
    y: np.ndarray,
    xt: np.ndarray,
    data_hash: str,
) -> dict[str, Any]:
    """Train (or load from cache) the encoder for one fraction and embed train and test.

    Returns ``{"z_train", "z_test", "mask", "encoder": {...summary...}}``.
    """
    from .embedding import TripletEncoder, train_encoder

    rng = np.random.default_rng([cfg.seed, int(round(fraction * 1e6))])
    mask = labeled_mask(y, fraction, rng)
    cache = None
    if cfg.cache_dir:
        cache = Path(cfg.cache_dir) / f"f{fraction:g}_{_cache_key(cfg, fraction, data_hash)}"
        if (cache / "embeddings.npz").is_file() and (cache / "encoder.pt").is_file():
            enc = TripletEncoder.load(cache / "encoder.pt", device=cfg.device)  # hash-verified
            npz = np.load(cache / "embeddings.npz")
            if np.array_equal(npz["mask"], mask):
                log.info("fraction %g: encoder and embeddings reused from %s", fraction, cache)
                return {
                    "z_train": npz["z_train"],
                    "z_test": npz["z_test"],
                    "mask": mask,
                    "encoder": _encoder_summary(enc, float(npz["embed_seconds"]), cache),
                }
    y_semi = np.where(mask, y, -1)
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


def _encoder_summary(enc: Any, embed_seconds: float, cache: Path | None) -> dict[str, Any]:
    m = enc.metadata
    met = m["metrics"]
    val = [v for v in met["val_knn1_accuracy"] if v is not None and not math.isnan(v)]
    return {
        "n_labeled": m["n_labeled"],
        "n_train": m["n_train"],
        "n_val": m["n_val"],
        "epochs_run": met["epochs_run"],
        "best_epoch": met["best_epoch"],
        "stop_reason": met["stop_reason"],
        "train_seconds": met["seconds"],
        "mean_epoch_seconds": float(np.mean(met["epoch_seconds"])),
        "val_knn1_accuracy_last": val[-1] if val else None,
        "embed_seconds": embed_seconds,
        "device": m["params"]["device"],
        "checkpoint": str(cache / "encoder.pt") if cache else None,
    }


def fit_sq(
    cfg: PaperConfig, optimizer: str, z: np.ndarray, y_semi: np.ndarray, rank: float | None = None
):
    """Fit ``StochasticQuantization`` (K, r, init="labels") with one optimizer; (model, seconds).

    ``rank`` overrides ``cfg.rank`` (used for the r = 2 comparison with KMeans)."""
    from . import StochasticQuantization  # the lead's estimator

    params = {
        "n_clusters": cfg.n_clusters,
        "optimizer": optimizer,
        "rank": cfg.rank if rank is None else rank,
        "init": "labels",
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
    for fraction in cfg.fractions:
        emb = embed_fraction(cfg, fraction, x, y, xt, data_hash)
        z, zt, mask = emb["z_train"], emb["z_test"], emb["mask"]
        y_semi = np.where(mask, y, -1)
        encoders.append({"fraction": fraction, **emb["encoder"]})
        log.info("fraction %g: encoder %s", fraction, emb["encoder"])

        curves, fitted = {}, {}
        for opt in cfg.optimizers:
            est, secs = fit_sq(cfg, opt, z, y_semi)
            centers = np.asarray(est.cluster_centers_, dtype=np.float64)
            pred = _center_classes(est, cfg.n_clusters)[nearest(zt, centers)[0]]
            row = {
                "fraction": fraction,
                "optimizer": opt,
                **_scores(yt, pred),
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
        names = _majority_names(km.labels_, y_semi, kc)
        references.append(
            {
                "fraction": fraction,
                "method": "kmeans",
                "optimizer": "kmeans",
                **_scores(yt, names[nearest(zt, kc)[0]]),
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
                if r["fraction"] == fraction and r["optimizer"] == opt
            )
            comparison.append(
                {
                    "fraction": fraction,
                    "optimizer": opt,
                    "sq_objective_r": sq_r,
                    "kmeans_objective_r": km_r,
                    "gap_r": (sq_r - km_r) / km_r,
                    "sq_objective_r2": sq_r2,
                    "kmeans_objective_r2": km_r2,
                    "gap_r2": (sq_r2 - km_r2) / km_r2,
                }
            )
        t0 = time.perf_counter()
        knn = KNeighborsClassifier(n_neighbors=cfg.knn_k).fit(z[mask], y[mask])
        knn_pred = knn.predict(zt)
        references.append(
            {
                "fraction": fraction,
                "method": f"knn{cfg.knn_k}",
                "optimizer": "knn",
                **_scores(yt, knn_pred),
                "objective": None,
                "objective_r2": None,
                "train_seconds": time.perf_counter() - t0,
            }
        )

        if plots_dir is not None and cfg.plots:
            plots += _fraction_plots(Path(plots_dir), fraction, z, y_semi, zt, yt, curves, fitted)
        report = {
            "config": _config_json(cfg, len(x), len(xt)),
            "results": results,
            "references": references,
            "encoders": encoders,
            "plots": plots,
            "objective_vs_kmeans": comparison,
            "complete": fraction == cfg.fractions[-1],
        }
        if on_fraction is not None:
            on_fraction(report)
    return report


def _fraction_plots(out: Path, fraction: float, z, y_semi, zt, yt, curves, fitted) -> list[str]:
    from .plots import plot_confusion, plot_convergence, plot_latent

    tag = f"f{fraction:g}"
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
            title=f"train embeddings, {fraction:.0%} labeled (grey = unlabeled); "
            f"x = SQ-{best_opt} centers",
        )
    )
    paths.append(
        plot_latent(
            zt,
            yt,
            out / f"{tag}_latent_test.png",
            centers=centers,
            title=f"test embeddings ({fraction:.0%} labeled encoder)",
        )
    )
    if any(len(c) for c in curves.values()):
        paths.append(
            plot_convergence(
                curves,
                out / f"{tag}_convergence.png",
                title=f"SQ loss curves, {fraction:.0%} labeled",
            )
        )
    if best_opt:
        paths.append(
            plot_confusion(
                yt,
                fitted[best_opt][1],
                out / f"{tag}_confusion.png",
                title=f"SQ-{best_opt}, {fraction:.0%} labeled, MNIST test",
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
        classification="nearest SQ center; center index = class (init='labels')",
        kmeans="sklearn KMeans, k-means++, best of kmeans_n_init starts; clusters named by "
        "majority label of labeled training members",
        knn=f"KNeighborsClassifier(k={cfg.knn_k}) on labeled training embeddings",
        objective="mean_i min_k ||z_i - c_k||^rank on all training embeddings",
    )
    return d


# --------------------------------------------------------------------------- output


def markdown_table(report: dict[str, Any]) -> str:
    """Weighted F1 (%) per method and fraction, then accuracy and objectives."""
    fr = list(dict.fromkeys(r["fraction"] for r in report["results"] + report["references"]))
    rows: dict[str, dict[float, dict]] = {}
    for r in report["results"]:
        rows.setdefault(f"Triplet + SQ-{r['optimizer']}", {})[r["fraction"]] = r
    for r in report["references"]:
        name = (
            "Triplet + KMeans (best of 10 k-means++)"
            if r["method"] == "kmeans"
            else f"Triplet + {r['method'].upper()} (labeled train, upper reference)"
        )
        rows.setdefault(name, {})[r["fraction"]] = r
    if not report.get("complete", True):
        fr_note = "**Partial run: fractions still missing from the requested list.**\n\n"
    else:
        fr_note = ""
    head = "| method | " + " | ".join(f"{f:.0%} labeled" for f in fr) + " |"
    sep = "|---|" + "---|" * len(fr)
    out = [
        fr_note
        + f"Weighted F1 on {report['config']['n_test']:,} MNIST test images, percent (accuracy in brackets).",
        "",
        head,
        sep,
    ]
    for name, cells in rows.items():
        vals = [
            f"{100 * cells[f]['f1_weighted']:.2f} ({100 * cells[f]['accuracy']:.2f})"
            if f in cells
            else "-"
            for f in fr
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
            by.setdefault(c["optimizer"], {})[c["fraction"]] = c
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
        "| fraction | labeled | epochs run (best) | stop | train s | "
        "s/epoch | val 1-NN acc | embed s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in report["encoders"]:
        va = e["val_knn1_accuracy_last"]
        out.append(
            f"| {e['fraction']:g} | {e['n_labeled']} | {e['epochs_run']} ({e['best_epoch']})"
            f" | {e['stop_reason']} | {e['train_seconds']:.0f} | "
            f"{e['mean_epoch_seconds']:.1f} | {'-' if va is None else f'{va:.4f}'} | "
            f"{e['embed_seconds']:.1f} |"
        )
    c = report["config"]
    out += [
        "",
        f"Config: epochs={c['epochs']}, batch={c['batch_size']}, lr={c['lr']}, "
        f"patience={c['patience']}, lr_plateau={c.get('lr_plateau_factor')}, augment={c.get('augment', False)}, encoder_max_seconds={c['encoder_max_seconds']}, "
        f"train_limit={c['train_limit']} (n_train={c['n_train']}), n_test={c['n_test']}, seed={c['seed']}, "
        f"sq_params={c['sq_params']}, torch threads={c['torch_threads']}.",
    ]
    return "\n".join(out) + "\n"


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


def write_outputs(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` (JSON) and the Markdown table beside it (same stem, ``.md``)."""
    out = Path(out)
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
        nargs="+",
        default=list(DEFAULT_FRACTIONS),
        help="labeled fractions of the training set (default: 0.25 0.5 0.75 1.0)",
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
        optimizers=tuple(args.optimizers),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
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
    out = Path(args.out)
    report = run_paper(
        cfg,
        plots_dir=out.parent / f"{out.stem}_plots",
        on_fraction=lambda rep: write_outputs(rep, out),
    )
    js, md = write_outputs(report, out)
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0
