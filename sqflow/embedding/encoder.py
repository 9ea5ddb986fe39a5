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

from .mining import semi_hard_triplet_loss
from .networks import build_network

__all__ = ["TripletEncoder", "train_encoder", "preprocess", "resolve_device", "CHECKPOINT_FORMAT"]

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


def _infer_preprocessing(x: np.ndarray) -> dict[str, Any]:
    """Preprocessing description for training inputs ``x``.

    * images ``(N, H, W)`` or ``(N, C, H, W)``: pixels scaled to [0, 1] (integers / 255; floats
      must already lie in [0, 1]) - the paper's only normalisation;
    * feature vectors ``(N, D)``: standardised with the training mean and std per column.
    """
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
    raise ValueError(f"preprocessing kind {spec['kind']!r} is not known")


def _default_arch(spec: dict[str, Any], latent_dim: int) -> dict[str, Any]:
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


def _augment_ranges(augment: bool | dict[str, float], ndim: int) -> dict[str, float] | None:
    """Validated augmentation ranges (None: off)."""
    if augment is False or augment is None:
        return None
    if ndim == 2:
        raise ValueError(
            "augment applies to images (N, H, W) / (N, C, H, W), not to feature "
            "vectors; pass augment=False"
        )
    ranges = {"rotation": 10.0, "shift": 0.08}
    if isinstance(augment, dict):
        unknown = set(augment) - set(ranges)
        if unknown:
            raise ValueError(
                f"augment has unknown keys {sorted(unknown)}; valid: "
                "'rotation' (degrees), 'shift' (fraction of the size)"
            )
        ranges.update({k: float(v) for k, v in augment.items()})
    elif augment is not True:
        raise ValueError(f"augment={augment!r}; use False, True or a dict of ranges")
    if not (0 <= ranges["rotation"] <= 180 and 0 <= ranges["shift"] < 0.5):
        raise ValueError(
            f"augment ranges {ranges} out of range: rotation in [0, 180] degrees, shift in [0, 0.5)"
        )
    return ranges


def _augment_batch(
    x: torch.Tensor, gen: torch.Generator, rotation: float, shift: float
) -> torch.Tensor:
    """Random rotation and translation per image (bilinear, zero = background fill).

    The random parameters come from the CPU generator ``gen``, so a seed gives the same
    augmentations on any device."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotation)
    # affine_grid works in [-1, 1] coordinates: a shift of f of the size is 2 f there
    off = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * shift)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack(
        [torch.stack([cos, -sin, off[:, 0]], 1), torch.stack([sin, cos, off[:, 1]], 1)], 1
    ).to(x.device, x.dtype)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


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
    patience: int = 5,
    min_delta: float = 1e-4,
    lr_plateau_factor: float | None = None,
    arch: dict[str, Any] | None = None,
    progress: bool = True,
    max_seconds: float | None = None,
    augment: bool | dict[str, float] = False,
) -> TripletEncoder:
    """Train a triplet encoder on the labeled rows (PAPER.md section 4).

    Parameters
    ----------
    images:
        Images ``(N, H, W)`` / ``(N, C, H, W)`` (uint8 0-255, or float in [0, 1]) for the
        paper's CNN, or feature vectors ``(N, D)`` for the MLP.
    labels:
        ``(N,)`` integer class ids >= 0, or -1 for unlabeled rows (not used for training).
    latent_dim:
        Embedding dimension n (paper: 3).
    epochs:
        Maximum number of passes over the labeled training rows (paper: 50).
    batch_size:
        Rows per batch; triplets are mined inside each batch (paper: 1000).
    margin:
        Triplet margin alpha (paper: 1.0).
    lr, weight_decay:
        Adam learning rate and L2 weight decay (paper: 1e-3, 1e-5).
    device:
        ``None`` = CUDA when available, else CPU.
    seed:
        Seeds weight init, the validation split and batch order.
    val_fraction:
        Share of each class of the LABELED rows held out for validation and early stopping
        (0 disables both). Never touches any test set.
    patience:
        Stop after this many epochs without a validation-loss improvement larger than
        ``min_delta``; the best epoch's weights are kept.
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
        Images only. True: every training batch is randomly rotated (uniform in +-10 degrees)
        and shifted (uniform in +-8 % of the width and height, about 2 px on 28x28) per image,
        background-filled: the placement and camera jitter of an inspection line, so the
        embedding learns to ignore it. A dict ``{"rotation": degrees, "shift": fraction}``
        sets the ranges. Validation batches are never augmented. Seeded by ``seed``.

    Returns
    -------
    TripletEncoder
        With ``metadata`` holding the data hash, labeled fraction, per-epoch metrics
        (``train_loss``, ``val_loss``, ``val_knn1_accuracy``), best epoch, seconds and versions.
    """
    from tqdm.auto import tqdm

    images = np.asarray(images)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must have shape (N,) = ({len(images)},); got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (-1 = unlabeled); got dtype {labels.dtype}")
    for name, value, ok in (
        ("epochs", epochs, epochs >= 1),
        ("batch_size", batch_size, batch_size >= 2),
        ("margin", margin, margin > 0),
        ("lr", lr, lr > 0),
        ("weight_decay", weight_decay, weight_decay >= 0),
        ("val_fraction", val_fraction, 0 <= val_fraction < 1),
        ("patience", patience, patience >= 1),
        (
            "lr_plateau_factor",
            lr_plateau_factor,
            lr_plateau_factor is None or 0 < lr_plateau_factor < 1,
        ),
        ("latent_dim", latent_dim, latent_dim >= 1),
    ):
        if not ok:
            raise ValueError(f"{name}={value!r} is out of range")
    aug = _augment_ranges(augment, images.ndim)
    labeled_rows = np.flatnonzero(labels >= 0)
    y_lab = labels[labeled_rows]
    if len(np.unique(y_lab)) < 2:
        raise ValueError("labels must contain at least two classes (>= 0) to form triplets")

    dev = resolve_device(device)
    spec = _infer_preprocessing(images)
    arch = dict(arch) if arch is not None else _default_arch(spec, latent_dim)
    arch.setdefault("latent_dim", latent_dim)

    rng = np.random.default_rng(seed)
    if val_fraction > 0:
        tr_local, va_local = _stratified_split(y_lab, val_fraction, rng)
    else:
        tr_local, va_local = np.arange(len(y_lab)), np.array([], dtype=np.int64)
    train_rows, val_rows = labeled_rows[tr_local], labeled_rows[va_local]
    if spec["kind"] == "vector":
        # standardise with the training rows only, so validation stays held out
        spec = _infer_preprocessing(images[train_rows])

    x_train = preprocess(images[train_rows], spec)
    y_train = torch.from_numpy(labels[train_rows].astype(np.int64))
    x_val = preprocess(images[val_rows], spec) if len(val_rows) else None
    y_val = torch.from_numpy(labels[val_rows].astype(np.int64))
    # a fixed reference sample of training rows for the validation 1-NN metric
    ref = torch.from_numpy(rng.permutation(len(train_rows))[: min(len(train_rows), 2000)])

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        net = build_network(arch).to(dev)
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1)  # its own stream: batch order unchanged
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
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
        "val_loss": [],
        "val_knn1_accuracy": [],
        "fraction_active": [],
        "epoch_seconds": [],
        "lr": [],
    }
    best = (math.inf, -1)
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    t_start = time.perf_counter()
    stop_reason = "max_epochs"

    def _embed(x: torch.Tensor) -> torch.Tensor:
        outs = [net(x[i : i + 4096].to(dev)) for i in range(0, len(x), 4096)]
        return torch.cat(outs) if outs else torch.empty(0, arch["latent_dim"], device=dev)

    bar = tqdm(range(epochs), desc="triplet encoder", unit="epoch", disable=not progress)
    with _deterministic(dev):
        for epoch in bar:
            t0 = time.perf_counter()
            net.train()
            perm = torch.randperm(len(x_train), generator=gen)
            tot, n_seen, act = 0.0, 0, 0.0
            for start in range(0, len(perm), batch_size):
                idx = perm[start : start + batch_size]
                if len(idx) < 2:
                    continue
                xb = x_train[idx].to(dev)
                if aug is not None:
                    xb = _augment_batch(xb, aug_gen, **aug)
                z = net(xb)
                loss, stats = semi_hard_triplet_loss(z, y_train[idx].to(dev), margin)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * len(idx)
                act += stats["fraction_active"] * len(idx)
                n_seen += len(idx)
            train_loss = tot / max(n_seen, 1)
            history["train_loss"].append(train_loss)
            history["fraction_active"].append(act / max(n_seen, 1))

            net.eval()
            val_loss, val_acc = math.nan, math.nan
            if x_val is not None:
                with torch.no_grad():
                    zv = _embed(x_val)
                    # validation loss is mined in batch-sized blocks, as in training
                    vl, vn = 0.0, 0
                    for s in range(0, len(zv), batch_size):
                        lv, _ = semi_hard_triplet_loss(
                            zv[s : s + batch_size], y_val[s : s + batch_size].to(dev), margin
                        )
                        k = min(batch_size, len(zv) - s)
                        vl += float(lv) * k
                        vn += k
                    val_loss = vl / max(vn, 1)
                    zr = _embed(x_train[ref]).cpu().numpy()
                    val_acc = _knn1_accuracy(
                        zr, y_train[ref].numpy(), zv.cpu().numpy(), y_val.numpy()
                    )
            history["val_loss"].append(val_loss)
            history["val_knn1_accuracy"].append(val_acc)
            history["epoch_seconds"].append(time.perf_counter() - t0)
            history["lr"].append(float(opt.param_groups[0]["lr"]))
            bar.set_postfix(
                loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.4f}"
            )
            log.info(
                "epoch %d: train_loss=%.4f val_loss=%.4f val_knn1=%.4f (%.1fs)",
                epoch + 1,
                train_loss,
                val_loss,
                val_acc,
                history["epoch_seconds"][-1],
            )

            monitored = val_loss if x_val is not None else train_loss
            if plateau is not None:
                plateau.step(monitored)
            if monitored < best[0] - min_delta:
                best = (monitored, epoch)
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                bad_epochs = 0
            else:
                bad_epochs += 1
                if x_val is not None and bad_epochs >= patience:
                    stop_reason = "early_stopping"
                    break
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                stop_reason = "max_seconds"
                break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)

    metadata = {
        "data_sha256": data_sha256(images, labels),
        "n_rows": int(len(images)),
        "n_labeled": int(len(labeled_rows)),
        "labeled_fraction": float(len(labeled_rows) / max(len(images), 1)),
        "n_train": int(len(train_rows)),
        "n_val": int(len(val_rows)),
        "params": {
            "latent_dim": latent_dim,
            "epochs": epochs,
            "batch_size": batch_size,
            "margin": margin,
            "lr": lr,
            "weight_decay": weight_decay,
            "seed": seed,
            "val_fraction": val_fraction,
            "patience": patience,
            "device": str(dev),
            "lr_plateau_factor": lr_plateau_factor,
            "augment": aug,
        },
        "metrics": {
            **history,
            "best_epoch": best[1] + 1,
            "best_monitored": best[0],
            "epochs_run": len(history["train_loss"]),
            "stop_reason": stop_reason,
            "seconds": time.perf_counter() - t_start,
        },
        "versions": _versions(),
    }
    return TripletEncoder(net, arch, spec, metadata, device=dev)
