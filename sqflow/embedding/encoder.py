"""Triplet encoder: training with online semi-hard mining, embedding in chunks, checkpoints.

Determinism
-----------
On CPU, the same inputs, arguments and ``seed`` (and the same torch build and thread count) give
bit-identical weights and embeddings: weights are initialised from ``torch.manual_seed(seed)``
inside a forked RNG state (the caller's global RNG is left untouched), batches are drawn from one
``torch.Generator`` seeded with ``seed``, and ``torch.use_deterministic_algorithms(True)`` is in
force while training. On CUDA, cuDNN convolution backward passes and float atomics can still
reorder floating-point sums: results are reproducible to within rounding on one GPU model and
driver, not bit-identical across GPU models, drivers or CPU<->GPU. ``CUBLAS_WORKSPACE_CONFIG`` is
set to ``:4096:8`` when training on CUDA so that deterministic mode does not raise.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .augment import affine_views, augment_ranges, make_views, view_ranges
from .augment_1d import SIGNAL_AUGMENT_DEFAULT, signal_ranges, signal_views
from .mining import semi_hard_triplet_loss
from .networks import build_network
from .networks_1d import default_arch_1d, preprocess_series, series_preprocessing
from .pseudo import assign_pseudo_labels, pseudo_label_ranges
from .selfsup import nt_xent_loss
from .teacher import manifold_pseudo_labels, teacher_rows

__all__ = [
    "TripletEncoder",
    "train_encoder",
    "training_mode",
    "MODES",
    "preprocess",
    "resolve_device",
    "CHECKPOINT_FORMAT",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sqflow.triplet_encoder/1"


# --------------------------------------------------------------------------- preprocessing


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not valid; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA but torch sees no CUDA device")
    return dev


INPUT_KINDS = ("image", "vector", "timeseries")


def input_kind_of(x: np.ndarray) -> str:
    """The input kind that the shape and dtype of ``x`` call for: ``(N, D)`` -> "vector";
    ``(N, C, H, W)`` and integer ``(N, H, W)`` -> "image"; floating ``(N, T, C)`` ->
    "timeseries" (float grayscale images must come as ``(N, 1, H, W)`` or with
    ``input_kind="image"``)."""
    if x.ndim == 3 and np.issubdtype(x.dtype, np.floating):
        return "timeseries"
    return "vector" if x.ndim == 2 else "image"


def _infer_preprocessing(x: np.ndarray, input_kind: str | None = None) -> dict[str, Any]:
    """Preprocessing description for training inputs ``x``.

    * images ``(N, H, W)`` or ``(N, C, H, W)``: pixels scaled to [0, 1] (integers / 255; floats
      must already lie in [0, 1]) - the paper's only normalisation;
    * feature vectors ``(N, D)``: standardised with the training mean and std per column;
    * time series ``(N, T, C)``: resampled to the training T, standardised per channel
      (:func:`sqflow.embedding.networks_1d.series_preprocessing`).

    ``input_kind`` None: :func:`input_kind_of`.
    """
    kind = input_kind or input_kind_of(x)
    if kind not in INPUT_KINDS:
        raise ValueError(
            f"input_kind={input_kind!r}; valid: None (from the shape) or {INPUT_KINDS}"
        )
    if kind == "timeseries":
        return series_preprocessing(x)
    if x.ndim in (3, 4):
        shape = (1, *x.shape[1:]) if x.ndim == 3 else tuple(x.shape[1:])
        return {"kind": "image", "input_shape": [int(s) for s in shape]}
    if x.ndim == 2:
        xf = x.astype(np.float64)
        mean = xf.mean(axis=0)
        std = xf.std(axis=0)
        std[std == 0] = 1.0  # constant columns stay 0 instead of dividing by zero
        return {
            "kind": "vector",
            "input_shape": [int(x.shape[1])],
            "mean": mean.tolist(),
            "std": std.tolist(),
        }
    raise ValueError(
        f"images must have shape (N, H, W), (N, C, H, W) or, for feature vectors, (N, D); "
        f"got {x.shape}"
    )


def preprocess(x: np.ndarray, spec: dict[str, Any]) -> torch.Tensor:
    """Turn a raw batch into the float32 network input described by ``spec``.

    Images: ``(N, H, W)`` or ``(N, 1, H, W)`` -> ``(N, C, H, W)`` float32 in [0, 1]. Integer
    pixels are divided by 255; float pixels are taken as already scaled and must lie in [0, 1].
    Vectors: ``(N, D)`` -> ``(N, D)`` float32 ``(x - mean) / std``.
    """
    x = np.asarray(x)
    want = tuple(spec["input_shape"])
    if spec["kind"] == "image":
        if x.ndim == len(want) and want[0] == 1:  # (N, H, W) -> (N, 1, H, W)
            x = x[:, None]
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"images have shape {x.shape}; this encoder expects (N, *{want})")
        if np.issubdtype(x.dtype, np.integer):
            t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)
        elif np.issubdtype(x.dtype, np.floating):
            if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
                raise ValueError(
                    "float images must be scaled to [0, 1] (or pass uint8 pixels 0-255); got "
                    f"values in [{float(x.min())}, {float(x.max())}]"
                )
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        else:
            raise ValueError(f"images have dtype {x.dtype}; use an integer or float dtype")
        return t
    if spec["kind"] == "vector":
        if x.ndim != 2 or x.shape[1] != want[0]:
            raise ValueError(f"feature vectors have shape {x.shape}; expected (N, {want[0]})")
        mean = np.asarray(spec["mean"], dtype=np.float64)
        std = np.asarray(spec["std"], dtype=np.float64)
        return torch.from_numpy(((x.astype(np.float64) - mean) / std).astype(np.float32))
    if spec["kind"] == "timeseries":
        return preprocess_series(x, spec)
    raise ValueError(f"preprocessing kind {spec['kind']!r} is not known")


def _default_arch(spec: dict[str, Any], latent_dim: int) -> dict[str, Any]:
    if spec["kind"] == "timeseries":
        return default_arch_1d(spec, latent_dim)
    if spec["kind"] == "image":
        c, h, w = spec["input_shape"]
        return {
            "name": "paper_cnn",
            "latent_dim": latent_dim,
            "image_size": [h, w],
            "in_channels": c,
            "hidden": 64,
        }
    return {
        "name": "mlp",
        "latent_dim": latent_dim,
        "in_features": spec["input_shape"][0],
        "hidden": [128, 64],
    }


# --------------------------------------------------------------------------- encoder


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        sq = version("sqflow")
    except PackageNotFoundError:
        sq = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sqflow": sq,
    }


def _state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over parameter names, dtypes, shapes and raw bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_sha256(images: np.ndarray, labels: np.ndarray | None = None) -> str:
    """SHA-256 of an array's shape, dtype and bytes (plus labels when given): the data hash."""
    h = hashlib.sha256()
    for arr in (images, labels):
        if arr is None:
            continue
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class TripletEncoder:
    """A trained embedding network plus its preprocessing and training metadata.

    Build it with :func:`train_encoder` or :meth:`load`. ``embed`` maps raw inputs (uint8 images
    ``(N, H, W)`` / ``(N, 1, H, W)`` or feature vectors ``(N, D)``) to float32
    ``(N, latent_dim)``.
    """

    def __init__(
        self,
        network: nn.Module,
        arch: dict[str, Any],
        preprocessing: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.arch = arch
        self.preprocessing = preprocessing
        self.metadata = metadata or {}

    @property
    def latent_dim(self) -> int:
        return int(self.arch["latent_dim"])

    def embed_chunks(self, images: np.ndarray, batch_size: int = 4096) -> Iterator[np.ndarray]:
        """Yield float32 ``(b, latent_dim)`` embeddings of consecutive ``batch_size`` rows.

        Only one batch is preprocessed at a time, so memory stays bounded for big (e.g.
        memory-mapped) inputs.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        self.network.eval()
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = preprocess(np.asarray(images[start : start + batch_size]), self.preprocessing)
                z = self.network(x.to(self.device, non_blocking=True))
                yield z.float().cpu().numpy()

    def embed(self, images: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Embeddings of all rows of ``images``: float32 ``(N, latent_dim)``."""
        out = np.empty((len(images), self.latent_dim), dtype=np.float32)
        pos = 0
        for chunk in self.embed_chunks(images, batch_size=batch_size):
            out[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the checkpoint to ``path`` and its description to ``path + '.json'``.

        The ``.pt`` file holds the weights and a JSON string with architecture, preprocessing
        and metadata (so ``torch.load(weights_only=True)`` can read it). The sidecar JSON repeats
        that description and records the SHA-256 of the ``.pt`` file; :meth:`load` refuses a
        checkpoint whose hash does not match. Returns the ``.pt`` path.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        desc = {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "preprocessing": self.preprocessing,
            "metadata": _json_safe(self.metadata),
            "weights_sha256": _state_sha256(state),
        }
        buf = io.BytesIO()
        torch.save({"state_dict": state, "description": json.dumps(desc)}, buf)
        blob = buf.getvalue()
        path.write_bytes(blob)
        sidecar = {**desc, "file": path.name, "file_sha256": hashlib.sha256(blob).hexdigest()}
        _sidecar_path(path).write_text(json.dumps(sidecar, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | torch.device | None = None
    ) -> TripletEncoder:
        """Read a checkpoint written by :meth:`save`, after verifying its SHA-256.

        Raises ``FileNotFoundError`` when the file or its ``.json`` sidecar is missing and
        ``ValueError`` when the file's hash differs from the sidecar's, the weights differ from
        the hash recorded inside, or the format is not a sqflow triplet encoder.
        """
        path = Path(path)
        side = _sidecar_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"encoder checkpoint {str(path)!r} does not exist")
        if not side.is_file():
            raise FileNotFoundError(
                f"checkpoint sidecar {str(side)!r} (with the recorded SHA-256) is missing; "
                "refusing to load an unverified encoder"
            )
        sidecar = json.loads(side.read_text())
        blob = path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != sidecar.get("file_sha256"):
            raise ValueError(
                f"encoder checkpoint {str(path)!r} does not match its recorded hash "
                f"(SHA-256 {digest}, recorded {sidecar.get('file_sha256')}); it was altered "
                "or belongs to another sidecar"
            )
        try:
            obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            desc = json.loads(obj["description"])
            state = obj["state_dict"]
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not our checkpoint"
            raise ValueError(
                f"{str(path)!r} is not a readable sqflow encoder checkpoint: {exc}"
            ) from exc
        if desc.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{str(path)!r} has format {desc.get('format')!r}; expected {CHECKPOINT_FORMAT!r}"
            )
        if _state_sha256(state) != desc.get("weights_sha256"):
            raise ValueError(
                f"weights in {str(path)!r} do not match the hash recorded inside the checkpoint"
            )
        net = build_network(desc["arch"])
        net.load_state_dict(state)
        return cls(net, desc["arch"], desc["preprocessing"], desc["metadata"], device=device)


def _json_safe(obj: Any) -> Any:
    """Metadata as strict JSON: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# --------------------------------------------------------------------------- training


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on while training; the caller's setting is restored after."""
    was = torch.are_deterministic_algorithms_enabled()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


# the old private names stay importable (tests and benches use them)
_augment_ranges = augment_ranges
_augment_batch = affine_views


def _stratified_split(
    labels: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices per class into (train, val); each class keeps >= 2 rows for training."""
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_fraction * len(rows)))
        n_val = min(n_val, max(len(rows) - 2, 0))
        val_idx.append(rows[:n_val])
        train_idx.append(rows[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def _knn1_accuracy(z_ref: np.ndarray, y_ref: np.ndarray, z_q: np.ndarray, y_q: np.ndarray) -> float:
    """1-nearest-neighbour accuracy of queries against a reference set (a validation metric)."""
    zq, zr = z_q.astype(np.float64), z_ref.astype(np.float64)
    # |q|^2 - 2 q.r + |r|^2 keeps memory at (Q, R) instead of (Q, R, d)
    d = (zq * zq).sum(1)[:, None] - 2.0 * zq @ zr.T + (zr * zr).sum(1)[None, :]
    return float((y_ref[d.argmin(1)] == y_q).mean())


MODES = ("label-free", "semi-supervised", "supervised")


def training_mode(labels: np.ndarray) -> str:
    """The mode the labels call for: all -1 -> "label-free", some -> "semi-supervised",
    none -1 -> "supervised"."""
    n_lab = int((np.asarray(labels) >= 0).sum())
    if n_lab == 0:
        return "label-free"
    return "supervised" if n_lab == len(labels) else "semi-supervised"


def _criterion(history: dict[str, list]) -> str:
    """What chose the kept epoch, in words for ``metrics["stop_rule"]``."""

    def used(key: str) -> bool:
        return any(v is not None and not math.isnan(v) for v in history[key])

    if not used("val_loss"):
        return "none: every epoch runs, the lowest training loss is kept"
    parts = ["labeled triplet loss"] if used("val_triplet_loss") else []
    parts += ["label-free NT-Xent loss"] if used("val_selfsup_loss") else []
    return "held-out " + " + ".join(parts)


def _check_finite_arg(name: str, value: Any, ok: bool) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range")


def train_encoder(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    latent_dim: int = 3,
    epochs: int = 50,
    batch_size: int = 1000,
    margin: float = 1.0,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    device: str | torch.device | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    min_val_per_class: int = 10,
    patience: int = 5,
    min_delta: float = 1e-4,
    lr_plateau_factor: float | None = None,
    arch: dict[str, Any] | None = None,
    progress: bool = True,
    max_seconds: float | None = None,
    augment: bool | dict[str, float] = False,
    selfsup_weight: float | None = None,
    temperature: float = 0.5,
    views: dict[str, float] | None = None,
    max_val_unlabeled: int = 2000,
    input_kind: str | None = None,
    pseudo_labels: bool | dict[str, Any] | None = None,
    selfsup_space: str = "latent",
) -> TripletEncoder:
    """Train an encoder on every row: triplets on the labeled rows, NT-Xent on all rows.

    The mode follows the labels (see :func:`training_mode`) and is recorded in
    ``metadata["mode"]``:

    * ``"supervised"`` (no -1): the paper's triplet network (PAPER.md section 4), as before;
      the label-free term is off unless ``selfsup_weight`` is given. Also the mode of some -1
      with ``selfsup_weight=0``, which trains on the labeled rows alone (``n_unlabeled`` still
      counts the rows passed and ignored).
    * ``"semi-supervised"`` (some -1, ``selfsup_weight`` > 0): per step, a batch of
      ``batch_size`` rows drawn from ALL training rows gives two random views and the NT-Xent
      loss (:mod:`.selfsup`), and a batch of up to ``batch_size`` labeled training rows
      (cycled) gives the semi-hard triplet loss;
      loss = triplet + ``selfsup_weight`` * NT-Xent. One epoch = one pass over all training rows.
    * ``"label-free"`` (all -1): NT-Xent only.

    Every row passed is used, for training or for validation: evaluation rows must be held out by
    the caller before calling.

    Parameters
    ----------
    images:
        Images ``(N, H, W)`` / ``(N, C, H, W)`` (uint8 0-255, or float in [0, 1]) for the
        paper's CNN, or feature vectors ``(N, D)`` for the MLP.
    labels:
        ``(N,)`` integer class ids >= 0, or -1 for unlabeled rows.
    latent_dim:
        Embedding dimension n (paper: 3).
    epochs:
        Maximum number of passes over the training rows (paper: 50).
    batch_size:
        Rows per batch; triplets are mined inside each labeled batch (paper: 1000), and NT-Xent
        negatives are the other rows of the batch.
    margin:
        Triplet margin alpha (paper: 1.0).
    lr, weight_decay:
        Adam learning rate and L2 weight decay (paper: 1e-3, 1e-5).
    device:
        ``None`` = CUDA when available, else CPU.
    seed:
        Seeds weight init, the validation splits, batch order and the random views.
    val_fraction:
        Share of each class of the LABELED rows held out for validation and early stopping, and
        (label-free term on) share of the UNLABELED rows, at most ``max_val_unlabeled``, held out
        for the label-free criterion: the NT-Xent loss of fixed views of those rows. 0 disables
        validation and early stopping. Never touches any test set.
    min_val_per_class:
        The labeled hold-out is kept only if it gives at least this many validation rows per
        class on average (default 10); otherwise no labeled row is held out, all of them train,
        and the stopping falls back to the label-free criterion (held-out unlabeled rows) when
        there is one, else every epoch runs and the weights of the lowest training loss are
        kept. Why: early stopping ranks epochs by a validation loss whose sampling noise
        shrinks with the rows per class; with a handful per class (10 validation series on
        GunPoint, 10 of 100 MNIST labels) the ranking is noise, bought with a ``val_fraction``
        share of the labels. The decision is in ``metrics["stop_rule"]``; 0 restores the plain
        ``val_fraction`` split.
    patience:
        Stop after this many epochs without an improvement of the monitored validation loss
        (triplet + ``selfsup_weight`` * NT-Xent, the parts that have held-out rows) larger than
        ``min_delta``; the best epoch's weights are kept. A labeled validation split that forms
        no triplet (one row per class) gives no triplet criterion; with no criterion at all the
        training loss is monitored and training runs to ``epochs`` / ``max_seconds``.
    lr_plateau_factor:
        When set (e.g. 0.3), multiply the learning rate by it after ``max(1, patience // 2)``
        epochs without a validation improvement (``ReduceLROnPlateau``); None keeps the paper's
        constant rate.
    arch:
        Network description (see :func:`sqflow.embedding.networks.build_network`); default:
        the paper CNN for images, an MLP for vectors.
    progress:
        Show a tqdm bar with one step per epoch.
    max_seconds:
        Optional wall-clock budget; training stops after the epoch that exceeds it.
    augment:
        Images only, the labeled (triplet) batches. True: every labeled batch is randomly rotated
        (uniform in +-10 degrees) and shifted (uniform in +-8 % of the width and height) per image,
        background-filled. A dict ``{"rotation": degrees, "shift": fraction}`` sets the ranges.
        Validation batches are never augmented. Seeded by ``seed``.
    selfsup_weight:
        Weight of the NT-Xent term. None (default): 1.0 when any row is unlabeled, 0 (off) when
        all rows are labeled. 0 with unlabeled rows: they are ignored (the pre-semi-supervised
        behaviour) and the mode is recorded as "supervised". Must be > 0 in label-free mode.
    temperature:
        NT-Xent temperature T > 0 (default 0.5).
    views:
        Ranges of the two random views of the label-free term. Images: ``{"rotation": degrees,
        "shift": fraction of the size, "scale": +-fraction}``, default 15, 0.1, 0.15. Feature
        vectors: ``{"mask": share of features zeroed, "noise": std in standardised units}``,
        default 0.2, 0.1.
    max_val_unlabeled:
        Cap on the held-out unlabeled validation rows (default 2000).
    input_kind:
        "image", "vector" or "timeseries"; None (default) infers it from the shape and dtype
        (:func:`input_kind_of`: floating ``(N, T, C)`` -> time series, 1-D convolutional
        encoder of :mod:`.networks_1d`; for time series ``augment`` and ``views`` take the signal
        ranges of :mod:`.augment_1d`: ``{"jitter", "scaling", "shift", "crop"}``).
    pseudo_labels:
        Self-training (:mod:`.pseudo`). None/False (default): off. True or a dict
        ``{"start_epoch": 5, "keep": 0.5, "n_clusters": None}``: from epoch ``start_epoch`` on,
        after every epoch the training rows are embedded, SQ is fitted on them (centers seeded
        from the labeled class means; label-free: ``n_clusters`` centers from k-means++, which
        is then required) and the ``keep`` share of each center's unlabeled rows that lie
        clearest inside their cell joins the triplet loss with that center's class as label.
        Needs the label-free term (unlabeled rows are only seen through it). Only epochs
        trained on pseudo-labels are candidates for the kept (best) weights.
        ``"source": "manifold"`` (:mod:`.teacher`) labels once instead, after epoch
        ``start_epoch``: UMAP and a Gaussian mixture on the network's convolutional features
        (``"teacher": {...}`` sets them); much stronger without labels (MNIST: 96 % correct
        pseudo-labels where the embedding's own assignments reach 35-72 %). ``"every": N``
        teaches again every ``N`` epochs after that, on the features trained since; each time
        the best-epoch search restarts, so the kept weights were trained on the latest labels.
    selfsup_space:
        Where the label-free term acts. "latent" (default): NT-Xent on the ``latent_dim``
        output itself. "hidden": NT-Xent on a projection head (hidden -> 128 -> 64, trained
        alongside and then discarded, as in SimCLR) over the network's last hidden layer, so a
        3-D latent is not asked to spread every row over a sphere; the latent is then shaped
        by the triplet loss alone. Label-free, the first pseudo-labels are assigned on the
        L2-normalised hidden layer (the latent has had no signal yet), later ones on the
        latent, seeded from the previous epoch's.

    Returns
    -------
    TripletEncoder
        ``metadata``: ``mode``, ``data_sha256``, ``n_rows``, ``n_labeled``, ``n_unlabeled``,
        ``labeled_fraction``, ``n_train``/``n_val`` (labeled rows), ``n_train_unlabeled``/
        ``n_val_unlabeled``, ``params`` (every argument, plus ``selfsup``: objective, weight,
        temperature, views), per-epoch ``metrics`` (``train_loss``, ``train_triplet_loss``,
        ``train_selfsup_loss``, ``val_loss``, ``val_triplet_loss``, ``val_selfsup_loss``,
        ``val_knn1_accuracy``, ...), best epoch, stop reason, seconds and versions.
    """
    from tqdm.auto import tqdm

    images = np.asarray(images)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must have shape (N,) = ({len(images)},); got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (-1 = unlabeled); got dtype {labels.dtype}")
    if labels.size and int(labels.min()) < -1:
        raise ValueError(f"labels must be class ids >= 0 or -1 (unlabeled); found {labels.min()}")
    for name, value, ok in (
        ("epochs", epochs, epochs >= 1),
        ("batch_size", batch_size, batch_size >= 2),
        ("margin", margin, margin > 0),
        ("lr", lr, lr > 0),
        ("weight_decay", weight_decay, weight_decay >= 0),
        ("val_fraction", val_fraction, 0 <= val_fraction < 1),
        ("min_val_per_class", min_val_per_class, min_val_per_class >= 0),
        ("patience", patience, patience >= 1),
        (
            "lr_plateau_factor",
            lr_plateau_factor,
            lr_plateau_factor is None or 0 < lr_plateau_factor < 1,
        ),
        ("latent_dim", latent_dim, latent_dim >= 1),
        ("temperature", temperature, temperature > 0),
        (
            "selfsup_weight",
            selfsup_weight,
            selfsup_weight is None or (math.isfinite(selfsup_weight) and selfsup_weight >= 0),
        ),
        ("max_val_unlabeled", max_val_unlabeled, max_val_unlabeled >= 0),
    ):
        _check_finite_arg(name, value, ok)
    pl_cfg = pseudo_label_ranges(pseudo_labels)
    if selfsup_space not in ("latent", "hidden"):
        raise ValueError(f"selfsup_space={selfsup_space!r}; use 'latent' or 'hidden'")
    spec = _infer_preprocessing(images, input_kind)
    if spec["kind"] == "timeseries":
        aug = signal_ranges(augment, SIGNAL_AUGMENT_DEFAULT, "augment")
    else:
        aug = augment_ranges(augment, images.ndim)
    mode = training_mode(labels)
    labeled_rows = np.flatnonzero(labels >= 0)
    unlabeled_rows = np.flatnonzero(labels < 0)
    y_lab = labels[labeled_rows]
    if selfsup_weight is None:
        selfsup_weight = 0.0 if mode == "supervised" else 1.0
    selfsup = selfsup_weight > 0
    if mode == "label-free" and not selfsup:
        raise ValueError(
            "selfsup_weight=0 with no labeled row (labels all -1) leaves nothing to learn; "
            "use selfsup_weight > 0 (default) or give labels"
        )
    if mode != "label-free" and len(np.unique(y_lab)) < 2:
        raise ValueError(
            f"labels must contain at least two classes (>= 0) to form triplets; found "
            f"{len(np.unique(y_lab))} class(es) in {len(labeled_rows)} labeled rows (or pass "
            "all -1 for label-free training)"
        )
    if pl_cfg is not None and not selfsup:
        raise ValueError(
            "pseudo_labels need the label-free term (selfsup_weight > 0 and unlabeled rows): "
            "without it no unlabeled row is trained on"
        )
    if mode == "semi-supervised" and not selfsup:
        # selfsup_weight=0 ignores the unlabeled rows: the network is the one trained on the
        # labeled rows alone (bit-identical), so the recorded mode must not claim they taught it
        mode = "supervised"
    if selfsup_space == "hidden" and mode == "label-free" and pl_cfg is None:
        raise ValueError(
            "selfsup_space='hidden' without labels trains nothing into the latent: add "
            "pseudo_labels={'n_clusters': K} (or use selfsup_space='latent')"
        )
    if pl_cfg is not None and mode == "label-free" and pl_cfg["n_clusters"] is None:
        raise ValueError(
            "pseudo_labels without any label need the number of clusters: pass "
            "pseudo_labels={'n_clusters': K}"
        )
    if pl_cfg is not None and pl_cfg["start_epoch"] >= epochs:
        raise ValueError(
            f"pseudo_labels start_epoch={pl_cfg['start_epoch']} must be below epochs={epochs}: "
            "the pseudo-labels are assigned after epoch start_epoch and train the epochs after "
            "it, so none would be trained on"
        )
    if selfsup and len(images) < 4:
        raise ValueError(f"the label-free objective needs at least 4 rows; got {len(images)}")

    dev = resolve_device(device)
    arch = dict(arch) if arch is not None else _default_arch(spec, latent_dim)
    arch.setdefault("latent_dim", latent_dim)
    view_r = view_ranges(views, spec["kind"]) if selfsup else None

    rng = np.random.default_rng(seed)
    all_local, no_val = np.arange(len(y_lab)), np.array([], dtype=np.int64)
    stop_rule: dict[str, Any] = {"min_val_per_class": min_val_per_class}
    if val_fraction > 0 and len(labeled_rows):
        tr_local, va_local = _stratified_split(y_lab, val_fraction, rng)
        per_class = len(va_local) / len(np.unique(y_lab))
        stop_rule["val_rows_per_class"] = per_class
        # too few validation labels to rank epochs: train on all of them instead (the split
        # was still drawn, so the unlabeled split below is the same either way)
        stop_rule["labeled_holdout"] = bool(per_class >= min_val_per_class)
        if not stop_rule["labeled_holdout"]:
            tr_local, va_local = all_local, no_val
    else:
        tr_local, va_local = all_local, no_val
        stop_rule["labeled_holdout"] = False
    train_rows, val_rows = labeled_rows[tr_local], labeled_rows[va_local]
    # unlabeled rows: a held-out share for the label-free criterion (only with the term on)
    if selfsup and val_fraction > 0 and len(unlabeled_rows) >= 8:
        n_vu = min(int(round(val_fraction * len(unlabeled_rows))), max_val_unlabeled)
        n_vu = max(n_vu, 4) if n_vu > 0 else 0
        pick = rng.permutation(len(unlabeled_rows))
        val_unl = np.sort(unlabeled_rows[pick[:n_vu]])
        train_unl = np.sort(unlabeled_rows[pick[n_vu:]])
    else:
        val_unl = np.array([], dtype=np.int64)
        train_unl = unlabeled_rows if selfsup else np.array([], dtype=np.int64)
    # rows of the label-free term: every training row, labeled or not
    ssl_rows = np.sort(np.concatenate([train_rows, train_unl])) if selfsup else train_rows
    if spec["kind"] in ("vector", "timeseries"):
        # standardise with the training rows only, so validation stays held out
        spec = _infer_preprocessing(images[ssl_rows], spec["kind"])

    x_train = preprocess(images[train_rows], spec)
    y_train = torch.from_numpy(labels[train_rows].astype(np.int64))
    x_val = preprocess(images[val_rows], spec) if len(val_rows) else None
    y_val = torch.from_numpy(labels[val_rows].astype(np.int64))
    # a fixed reference sample of training rows for the validation 1-NN metric
    ref = torch.from_numpy(rng.permutation(len(train_rows))[: min(len(train_rows), 2000)])
    # on the training device: the random views are then computed there too (a CPU generator
    # still draws every number, so the views do not depend on the device)
    x_ssl = preprocess(images[ssl_rows], spec).to(dev) if selfsup else None
    y_ssl = labels[ssl_rows] if selfsup else None

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        net = build_network(arch).to(dev)
        proj = None
        if selfsup and selfsup_space == "hidden":
            with torch.no_grad():
                width = net.representation(x_ssl[:2].to(dev)).shape[1]
            proj = nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, 64)).to(dev)
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1)  # its own stream: batch order unchanged
    view_gen = torch.Generator().manual_seed(seed + 2)
    lab_gen = torch.Generator().manual_seed(seed + 3)
    # fixed views of the held-out unlabeled rows, so the criterion compares like with like
    xvu = xvu1 = xvu2 = None
    if len(val_unl):
        xvu = preprocess(images[val_unl], spec)
        fixed = torch.Generator().manual_seed(seed + 4)
        xvu1 = make_views(xvu, fixed, spec["kind"], view_r)
        xvu2 = make_views(xvu, fixed, spec["kind"], view_r)
    params = list(net.parameters()) + (list(proj.parameters()) if proj is not None else [])
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    plateau = None
    if lr_plateau_factor is not None:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode="min",
            factor=lr_plateau_factor,
            patience=max(1, patience // 2),
            threshold=min_delta,
            threshold_mode="abs",
        )

    history: dict[str, list[float]] = {
        "train_loss": [],
        "train_triplet_loss": [],
        "train_selfsup_loss": [],
        "val_loss": [],
        "val_triplet_loss": [],
        "val_selfsup_loss": [],
        "val_knn1_accuracy": [],
        "fraction_active": [],
        "epoch_seconds": [],
        "lr": [],
        "pseudo_labeled": [],
    }
    best = (math.inf, -1)
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    t_start = time.perf_counter()
    stop_reason = "max_epochs"

    def _ssl_out(v: torch.Tensor) -> torch.Tensor:
        """What the label-free term compares: the latent, or the projected hidden layer."""
        return net(v) if proj is None else proj(net.representation(v))

    def _embed(x: torch.Tensor, fn=net) -> torch.Tensor:
        outs = [fn(x[i : i + 4096].to(dev)) for i in range(0, len(x), 4096)]
        return torch.cat(outs) if outs else torch.empty(0, arch["latent_dim"], device=dev)

    def _labeled_batches(
        x_pool: torch.Tensor, y_pool: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches of the triplet pool (the labeled training rows, plus the
        pseudo-labeled ones once self-training has started), reshuffled at each pass."""
        size = min(batch_size, len(y_pool))
        while True:
            perm = torch.randperm(len(y_pool), generator=lab_gen)
            for s in range(0, len(perm) - size + 1, size):
                yield x_pool[perm[s : s + size]], y_pool[perm[s : s + size]]

    def _triplet_step(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, float]:
        xb = xb.to(dev)
        if aug is not None:
            views_of = signal_views if spec["kind"] == "timeseries" else affine_views
            xb = views_of(xb, aug_gen, **aug)
        loss, stats = semi_hard_triplet_loss(net(xb), yb.to(dev), margin)
        return loss, stats["fraction_active"]

    bar = tqdm(range(epochs), desc=f"encoder ({mode})", unit="epoch", disable=not progress)
    lab_iter = _labeled_batches(x_train, y_train) if selfsup and len(train_rows) >= 2 else None
    prev_pl = None  # label-free: last epoch's pseudo-labels, the seeds of the next assignment
    per_epoch_pl = pl_cfg is not None and pl_cfg["source"] == "embedding"
    n_teacher, teacher_val = 0, None
    teachings: list[dict[str, Any]] = []  # what each teaching did, in order
    last_taught = pl_cfg["start_epoch"] if pl_cfg is not None else 0  # epochs done at the last

    def teach_now(done: int) -> bool:
        """Whether the manifold teacher labels after ``done`` epochs (never after the last:
        no epoch would train on those labels)."""
        if pl_cfg is None or per_epoch_pl or not pl_cfg["start_epoch"] <= done < epochs:
            return False
        since = done - pl_cfg["start_epoch"]
        return since == 0 or (pl_cfg["every"] is not None and since % pl_cfg["every"] == 0)

    def _teacher_features(v: torch.Tensor) -> torch.Tensor:
        """What the manifold teacher clusters: convolutional features (CNNs), else the last
        hidden layer, L2-normalised as NT-Xent compares them."""
        f = net.features(v).flatten(1) if hasattr(net, "features") else net.representation(v)
        return nn.functional.normalize(f, dim=1)

    def _teach() -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """The manifold teacher, once: labels + pseudo-labels of the training rows (``y_ssl``
        order), pseudo-labels of the held-out unlabeled rows (None without them; no label is
        involved, so teaching them leaks nothing), and what the teacher did."""
        taught = teacher_rows(len(y_ssl), pl_cfg["teacher"]["max_rows"], seed)
        with torch.no_grad():
            parts = [_embed(x_ssl[taught], _teacher_features).cpu().numpy()]
            if xvu is not None:
                parts.append(_embed(xvu, _teacher_features).cpu().numpy())
        feats = np.concatenate(parts)
        y_taught, info = manifold_pseudo_labels(
            feats,
            np.concatenate([y_ssl[taught], np.full(len(feats) - len(taught), -1)]),
            keep=pl_cfg["keep"],
            n_clusters=pl_cfg["n_clusters"],
            seed=seed,
            teacher=pl_cfg["teacher"],
        )
        y_pl = y_ssl.copy()
        y_pl[taught] = y_taught[: len(taught)]
        return y_pl, (y_taught[len(taught) :] if xvu is not None else None), info

    with _deterministic(dev):
        for epoch in bar:
            t0 = time.perf_counter()
            net.train()
            tot, tot_t, tot_s, n_seen, act = 0.0, 0.0, 0.0, 0, 0.0
            n_pool = len(ssl_rows) if selfsup else len(train_rows)
            perm = torch.randperm(n_pool, generator=gen)
            for start in range(0, len(perm), batch_size):
                idx = perm[start : start + batch_size]
                if len(idx) < 2:
                    continue
                if not selfsup:
                    loss, frac = _triplet_step(x_train[idx], y_train[idx])
                    lt, ls = float(loss.detach()), 0.0
                else:
                    xb = x_ssl[idx]
                    v1 = make_views(xb, view_gen, spec["kind"], view_r).to(dev)
                    v2 = make_views(xb, view_gen, spec["kind"], view_r).to(dev)
                    l_s = nt_xent_loss(_ssl_out(v1), _ssl_out(v2), temperature)
                    loss = selfsup_weight * l_s
                    ls, lt, frac = float(l_s.detach()), 0.0, 0.0
                    if lab_iter is not None:
                        l_t, frac = _triplet_step(*next(lab_iter))
                        loss = loss + l_t
                        lt = float(l_t.detach())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * len(idx)
                tot_t += lt * len(idx)
                tot_s += ls * len(idx)
                act += frac * len(idx)
                n_seen += len(idx)
            n_seen = max(n_seen, 1)
            train_loss = tot / n_seen
            history["train_loss"].append(train_loss)
            history["train_triplet_loss"].append(
                tot_t / n_seen if mode != "label-free" or lab_iter is not None else None
            )
            history["train_selfsup_loss"].append(tot_s / n_seen if selfsup else None)
            history["fraction_active"].append(act / n_seen)

            net.eval()
            val_t, val_s, val_acc = math.nan, math.nan, math.nan
            with torch.no_grad():
                if x_val is not None:
                    zv = _embed(x_val)
                    # validation loss is mined in batch-sized blocks, as in training
                    vl, vn, n_trip = 0.0, 0, 0
                    for s in range(0, len(zv), batch_size):
                        lv, st = semi_hard_triplet_loss(
                            zv[s : s + batch_size], y_val[s : s + batch_size].to(dev), margin
                        )
                        k = min(batch_size, len(zv) - s)
                        vl += float(lv) * k
                        vn += k
                        n_trip += st["n_triplets"]
                    # no triplet (e.g. one validation row per class): no triplet criterion,
                    # rather than a constant 0 that would stop training after `patience` epochs
                    val_t = vl / max(vn, 1) if n_trip else math.nan
                    # a 1-NN "accuracy" against pseudo-labels would only measure agreement
                    # with the teacher; label-free there is no labeled reference at all
                    if len(ref) and teacher_val is None:
                        zr = _embed(x_train[ref]).cpu().numpy()
                        val_acc = _knn1_accuracy(
                            zr, y_train[ref].numpy(), zv.cpu().numpy(), y_val.numpy()
                        )
                if xvu1 is not None:
                    z1, z2 = _embed(xvu1, _ssl_out), _embed(xvu2, _ssl_out)
                    sl, sn = 0.0, 0
                    for s in range(0, len(z1), batch_size):
                        k = min(batch_size, len(z1) - s)
                        if k < 2:
                            continue
                        ls_v = nt_xent_loss(z1[s : s + k], z2[s : s + k], temperature)
                        sl += float(ls_v) * k
                        sn += k
                    val_s = sl / max(sn, 1)
            parts = []
            if x_val is not None and not math.isnan(val_t):
                parts.append(val_t)
            if xvu1 is not None:
                parts.append(selfsup_weight * val_s)
            val_loss = float(sum(parts)) if parts else math.nan
            history["val_loss"].append(val_loss)
            history["val_triplet_loss"].append(val_t)
            history["val_selfsup_loss"].append(val_s)
            history["val_knn1_accuracy"].append(val_acc)
            history["epoch_seconds"].append(time.perf_counter() - t0)
            history["lr"].append(float(opt.param_groups[0]["lr"]))
            bar.set_postfix(
                loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.4f}"
            )
            log.info(
                "epoch %d (%s): train_loss=%.4f val_loss=%.4f val_selfsup=%.4f val_knn1=%.4f "
                "(%.1fs)",
                epoch + 1,
                mode,
                train_loss,
                val_loss,
                val_s,
                val_acc,
                history["epoch_seconds"][-1],
            )

            val_based = not math.isnan(val_loss)
            monitored = val_loss if val_based else train_loss
            if plateau is not None:
                plateau.step(monitored)
            if teach_now(epoch + 1):
                y_pl, y_vu, teacher_info = _teach()
                teachings.append(teacher_info)
                teacher_info["epoch"] = epoch + 1
                if (x_val is None or teacher_val) and y_vu is not None:
                    # no labeled validation rows: the taught held-out rows validate the triplets
                    kept_val = np.flatnonzero(y_vu >= 0)
                    x_val, y_val = xvu[kept_val], torch.from_numpy(y_vu[kept_val])
                    teacher_val = teacher_info["validation"] = "pseudo-labeled held-out rows"
                sel = torch.from_numpy(np.flatnonzero(y_pl >= 0))
                n_teacher = int(len(sel) - (y_ssl >= 0).sum())
                lab_iter = _labeled_batches(x_ssl[sel], torch.from_numpy(y_pl)[sel])
                log.info("manifold teacher: %s", teacher_info)
                # the criterion changed with the labels (and label-free, with the validation
                # rows): only epochs trained on the latest pseudo-labels compete, and the LR
                # plateau forgets the old scale, else every teaching's jump in the validation
                # loss would cut the rate again (the first teaching's single cut is kept: the
                # measured runs had it)
                if len(teachings) > 1:
                    # (the weights held so far stay the fallback, with their epoch)
                    best, bad_epochs = (math.inf, best[1]), 0
                    if plateau is not None:
                        plateau.best, plateau.num_bad_epochs = plateau.mode_worse, 0
                last_taught = epoch + 1
            n_pseudo = n_teacher
            if per_epoch_pl and epoch + 1 >= pl_cfg["start_epoch"]:
                # self-training: tomorrow's triplet pool = labels + confident SQ assignments
                with torch.no_grad():
                    if proj is not None and mode == "label-free" and prev_pl is None:
                        # the latent has had no signal yet: cluster what NT-Xent shaped
                        h = _embed(x_ssl, net.representation)
                        z_pool = nn.functional.normalize(h, dim=1).cpu().numpy()
                    else:
                        z_pool = _embed(x_ssl).cpu().numpy()
                y_pl = assign_pseudo_labels(
                    z_pool,
                    y_ssl,
                    keep=pl_cfg["keep"],
                    n_clusters=pl_cfg["n_clusters"],
                    seed=seed + epoch,
                    seed_labels=prev_pl,
                )
                if mode == "label-free":
                    prev_pl = y_pl
                sel = torch.from_numpy(np.flatnonzero(y_pl >= 0))
                n_pseudo = int(len(sel) - (y_ssl >= 0).sum())
                lab_iter = _labeled_batches(x_ssl[sel], torch.from_numpy(y_pl)[sel])
            history["pseudo_labeled"].append(n_pseudo)

            # with self-training, only a model trained on pseudo-labels is a candidate: before,
            # the objective differs (and a label-free latent is not trained at all)
            candidate = pl_cfg is None or epoch + 1 > last_taught
            if not candidate:
                pass
            elif monitored < best[0] - min_delta:
                best = (monitored, epoch)
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                bad_epochs = 0
            else:
                bad_epochs += 1
                if val_based and bad_epochs >= patience:
                    stop_reason = "early_stopping"
                    break
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                stop_reason = "max_seconds"
                break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        # no epoch was a candidate (a time cap before any epoch trained on pseudo-labels, or a
        # monitored loss that was never finite): the weights are the last epoch's, and the
        # record says so with that epoch's loss, not "epoch 0" with an infinite best
        best = (monitored, len(history["train_loss"]) - 1)
        log.warning(
            "encoder: stopped (%s) with no epoch eligible as the best (none trained on "
            "pseudo-labels yet, or the monitored loss was never finite: %s); the last epoch's "
            "weights (epoch %d) are kept",
            stop_reason,
            monitored,
            best[1] + 1,
        )

    metadata = {
        "mode": mode,
        "data_sha256": data_sha256(images, labels),
        "n_rows": int(len(images)),
        "n_labeled": int(len(labeled_rows)),
        "n_unlabeled": int(len(unlabeled_rows)),
        "labeled_fraction": float(len(labeled_rows) / max(len(images), 1)),
        "n_train": int(len(train_rows)),
        "n_val": int(len(val_rows)),
        "n_train_unlabeled": int(len(train_unl)),
        "n_val_unlabeled": int(len(val_unl)),
        "params": {
            "latent_dim": latent_dim,
            "epochs": epochs,
            "batch_size": batch_size,
            "margin": margin,
            "lr": lr,
            "weight_decay": weight_decay,
            "seed": seed,
            "val_fraction": val_fraction,
            "min_val_per_class": min_val_per_class,
            "patience": patience,
            "device": str(dev),
            "lr_plateau_factor": lr_plateau_factor,
            "augment": aug,
            "triplet_weight": 1.0 if mode != "label-free" or pl_cfg else 0.0,
            "selfsup": {
                "objective": "nt-xent" if selfsup else None,
                "weight": float(selfsup_weight),
                "temperature": temperature if selfsup else None,
                "views": {"kind": spec["kind"], **view_r} if selfsup else None,
                "max_val_unlabeled": max_val_unlabeled,
                "space": selfsup_space if selfsup else None,
            },
            "pseudo_labels": (
                {
                    **pl_cfg,
                    "confidence": "d1/d2 ratio" if per_epoch_pl else "mixture posterior",
                    "teacher_result": teachings[-1] if teachings else None,
                    "teachings": teachings if len(teachings) > 1 else None,
                }
                if pl_cfg
                else None
            ),
        },
        "metrics": {
            **history,
            "best_epoch": best[1] + 1,
            "best_monitored": best[0],
            "monitored": "val_loss"
            if any(not math.isnan(v) for v in history["val_loss"])
            else "train_loss",
            "epochs_run": len(history["train_loss"]),
            "stop_reason": stop_reason,
            "stop_rule": {**stop_rule, "criterion": _criterion(history)},
            "seconds": time.perf_counter() - t_start,
        },
        "versions": _versions(),
    }
    return TripletEncoder(net, arch, spec, metadata, device=dev)
