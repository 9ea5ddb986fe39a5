"""PNG pictures of an embedding and its clustering, for the paper CLI and the pipeline.

Every function writes one PNG and returns its path. matplotlib runs on the non-interactive Agg
backend, so this works on servers without a display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_latent", "plot_convergence", "plot_confusion"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def plot_latent(
    z: np.ndarray,
    labels: np.ndarray | None,
    path: str | os.PathLike[str],
    *,
    centers: np.ndarray | None = None,
    title: str = "latent space",
    max_points: int = 8000,
) -> Path:
    """Scatter of embeddings ``z`` (N, d) coloured by ``labels`` (N,) (-1 = unlabeled, grey).

    d = 3 gives a 3-D scatter, d = 2 a plane; d > 3 shows the first two principal components.
    ``centers`` (K, d), when given, are drawn as black crosses numbered by index. At most
    ``max_points`` points (a fixed random sample) are drawn so the picture stays readable.
    """
    plt = _plt()
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"z must have shape (N, d) with d >= 2; got {z.shape}")
    c = None if centers is None else np.asarray(centers, dtype=np.float64)
    if z.shape[1] > 3:  # project onto the first two principal axes of z
        mean = z.mean(0)
        _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
        z = (z - mean) @ vt[:2].T
        c = None if c is None else (c - mean) @ vt[:2].T
    idx = _subsample(len(z), max_points)
    zs = z[idx]
    lab = None if labels is None else np.asarray(labels)[idx]
    three = z.shape[1] == 3
    fig = plt.figure(figsize=(7, 6))
    ax = fig.add_subplot(111, projection="3d" if three else None)
    coords = (zs[:, 0], zs[:, 1], zs[:, 2]) if three else (zs[:, 0], zs[:, 1])
    if lab is None:
        ax.scatter(*coords, s=2, c="tab:blue", alpha=0.5)
    else:
        unl = lab < 0
        if unl.any():
            pts = [a[unl] for a in coords]
            ax.scatter(*pts, s=2, c="lightgrey", alpha=0.4, label="unlabeled")
        cmap = plt.get_cmap("tab10")
        for k in np.unique(lab[~unl]):
            m = lab == k
            ax.scatter(
                *[a[m] for a in coords], s=2, color=cmap(int(k) % 10), alpha=0.6, label=str(k)
            )
        ax.legend(markerscale=5, fontsize=7, loc="best", ncol=2)
    if c is not None:
        cc = (c[:, 0], c[:, 1], c[:, 2]) if three else (c[:, 0], c[:, 1])
        ax.scatter(*cc, s=120, c="black", marker="x", linewidths=2)
        for k in range(len(c)):
            ax.text(*[a[k] for a in cc], f" {k}", fontsize=9, weight="bold")
    ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_convergence(
    curves: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    title: str = "SQ convergence",
    xlabel: str = "block of samples (loss_curve_ entry)",
    ylabel: str = "objective",
) -> Path:
    """One line per named curve (e.g. ``loss_curve_`` per optimizer); log-scaled y when the
    values are positive and span more than a factor of 10."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite: list[np.ndarray] = []
    for name, ys in curves.items():
        ys = np.asarray(ys, dtype=np.float64)
        if ys.size == 0:
            continue
        finite.append(ys[np.isfinite(ys)])
        ax.plot(np.arange(1, len(ys) + 1), ys, label=name, lw=1.2, marker=".")
    allv = np.concatenate(finite) if finite else np.array([])
    # log scale only when the curves span more than a decade; otherwise it hides the detail
    if allv.size and allv.min() > 0 and allv.max() / allv.min() > 10:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_confusion(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str = "confusion matrix",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Confusion matrix (rows = true class, columns = predicted) with counts in the cells."""
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    classes = np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred)]))
    cm = confusion_matrix(y_true, y_pred, labels=classes)
    names = list(class_names) if class_names is not None else [str(c) for c in classes]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(classes)), names)
    ax.set_yticks(range(len(classes)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if cm[i, j] > thresh else "black",
            )
    ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
