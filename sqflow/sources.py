"""Readers of the pipeline's sources and the sample selection (plain Python, no Prefect).

A :class:`Source` (built from a :class:`data_contracts.manifest.SourceSpec`) does two things:

* :meth:`Source.scan` checks EVERY item (it decodes, has the expected size/channels, values in
  range and finite, id not a duplicate, label an integer) and returns the accepted items as a
  manifest frame plus a ``(sample_ref, reason)`` list of the refused ones (quarantine);
* :meth:`Source.load` returns the data of accepted items by their ``source_ref``, in order.

A source that does not exist, or has no readable item, raises :class:`SourceError` naming it.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_contracts.manifest import MANIFEST_COLUMNS, SampleSpec, SourceSpec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_NPZ_X = ("x", "X", "data", "images")
_NPZ_Y = ("y", "labels", "label")


class SourceError(RuntimeError):
    """The source as a whole cannot be used (missing, unreadable, or no valid item)."""


@dataclass
class ScanResult:
    """Output of :meth:`Source.scan`."""

    items: pd.DataFrame  # MANIFEST_COLUMNS
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (sample_ref, reason)
    item_shape: tuple[int, ...] = ()
    n_scanned: int = 0


def _frame(ids: Iterable[str], refs: Iterable[str], labels: Iterable[int], split) -> pd.DataFrame:
    ids = list(ids)
    df = pd.DataFrame(
        {
            "sample_id": pd.Series(ids, dtype="str"),
            "source_ref": pd.Series(list(refs), dtype="str"),
            "label": pd.Series(np.asarray(list(labels), dtype=np.int64), dtype="int64"),
            "split": pd.Series(
                [split] * len(ids) if isinstance(split, str) else list(split), dtype="str"
            ),
        }
    )
    return df[list(MANIFEST_COLUMNS)]


def _fail_if_empty(spec: SourceSpec, result: ScanResult) -> ScanResult:
    if len(result.items) == 0:
        reasons = Counter(r for _, r in result.rejected).most_common(3)
        raise SourceError(
            f"source {spec.kind} {spec.path or spec.split!r} has no readable item "
            f"({result.n_scanned} found, {len(result.rejected)} quarantined"
            + (f"; top reasons: {reasons}" if reasons else "")
            + ")"
        )
    return result


def _need_path(p: str | None, what: str) -> Path:
    path = Path(str(p)).expanduser()
    if not path.exists():
        raise SourceError(f"{what} {str(path)!r} does not exist")
    return path


class Source:
    """A readable source; use :func:`open_source`."""

    spec: SourceSpec

    def scan(self) -> ScanResult:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, refs: Sequence[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


# ---------------------------------------------------------------------------- array sources
class _ArraySource(Source):
    """Sources whose items are rows of one in-memory (or memory-mapped) array."""

    prefix: str = ""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self._ids: np.ndarray | None = None
        self._split: np.ndarray | str = "all"

    def _read(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._x is None:
            self._read()
        assert self._x is not None
        return self._x, self._y

    def _default_range(self, x: np.ndarray) -> tuple[float, float] | None:
        if self.spec.value_range is not None:
            return tuple(self.spec.value_range)  # type: ignore[return-value]
        if x.dtype == np.uint8:
            return None  # always in 0..255
        if x.ndim >= 3:  # float images must be scaled to [0, 1] (what the encoder accepts)
            return (0.0, 1.0)
        return None

    def scan(self) -> ScanResult:
        x, y = self._arrays()
        n = len(x)
        ok = np.ones(n, dtype=bool)
        reasons: dict[int, str] = {}
        if x.dtype.kind not in "uif":
            raise SourceError(
                f"source {self.spec.path!r}: dtype {x.dtype} is not numeric; valid: uint8 "
                "images or float/int feature vectors"
            )
        flat = x.reshape(n, -1)
        rng = self._default_range(x)
        step = 65536
        for lo in range(0, n, step):
            block = np.asarray(flat[lo : lo + step])
            if block.dtype.kind == "f":
                finite = np.isfinite(block).all(axis=1)
                for i in np.flatnonzero(~finite):
                    ok[lo + i] = False
                    reasons[lo + i] = "value is NaN or infinite"
            if rng is not None:
                with np.errstate(invalid="ignore"):
                    out = ((block < rng[0]) | (block > rng[1])).any(axis=1)
                for i in np.flatnonzero(out):
                    if ok[lo + i]:
                        ok[lo + i] = False
                        reasons[lo + i] = f"value out of range [{rng[0]:g}, {rng[1]:g}]"
        ids = (
            self._ids
            if self._ids is not None
            else np.array([f"{self.prefix}{i:06d}" for i in range(n)], dtype=object)
        )
        seen: set[str] = set()
        for i, sid in enumerate(ids):
            sid = str(sid)
            if not sid:
                ok[i] = False
                reasons.setdefault(i, "empty sample id")
            elif sid in seen:
                ok[i] = False
                reasons.setdefault(i, f"duplicate sample id {sid!r}")
            seen.add(sid)
        labels = np.full(n, -1, dtype=np.int64) if y is None else y
        idx = np.flatnonzero(ok)
        refs = [f"{self.ref_base}#{i}" for i in idx]
        split = self._split if isinstance(self._split, str) else np.asarray(self._split)[idx]
        items = _frame((str(s) for s in ids[idx]), refs, labels[idx], split)
        rejected = [(f"{self.ref_base}#{i}", r) for i, r in sorted(reasons.items())]
        return _fail_if_empty(
            self.spec, ScanResult(items, rejected, tuple(int(s) for s in x.shape[1:]), n)
        )

    @property
    def ref_base(self) -> str:
        return Path(str(self.spec.path)).name

    def load(self, refs: Sequence[str]) -> np.ndarray:
        x, _ = self._arrays()
        rows = np.fromiter(
            (int(r.rsplit("#", 1)[1]) for r in refs), dtype=np.int64, count=len(refs)
        )
        if len(rows) > 1 and np.all(np.diff(rows) == 1):
            return np.asarray(x[rows[0] : rows[-1] + 1])
        return (
            np.asarray(x[np.sort(rows)][np.argsort(np.argsort(rows))])
            if len(rows)
            else np.empty((0, *x.shape[1:]), dtype=x.dtype)
        )


class MnistSource(_ArraySource):
    """The built-in MNIST (verified against its SHA-256 sums on load)."""

    def _read(self) -> None:
        from sqflow.datasets import load_mnist

        splits = ["train", "test"] if self.spec.split == "all" else [self.spec.split]
        xs, ys, ids, sp = [], [], [], []
        for s in splits:
            x, y = load_mnist(s)
            xs.append(x)
            ys.append(y)
            ids.extend(f"mnist-{s}-{i:05d}" for i in range(len(x)))
            sp.extend([s] * len(x))
        self._x = np.concatenate(xs) if len(xs) > 1 else xs[0]
        self._y = np.concatenate(ys) if len(ys) > 1 else ys[0]
        self._ids = np.asarray(ids, dtype=object)
        self._split = np.asarray(sp, dtype=object)

    @property
    def ref_base(self) -> str:
        return f"mnist:{self.spec.split}"


class IdxSource(_ArraySource):
    """An IDX image file with an optional IDX label file."""

    def _read(self) -> None:
        from sqflow.datasets import load_idx

        path = _need_path(self.spec.path, "IDX image file")
        labels = (
            _need_path(self.spec.labels_path, "IDX label file") if self.spec.labels_path else None
        )
        try:
            self._x, self._y = load_idx(path, labels)
        except ValueError as exc:
            raise SourceError(f"IDX source unreadable: {exc}") from exc
        self.prefix = f"{path.name.split('.')[0]}-"


class NpySource(_ArraySource):
    """A .npy array (N, ...) with an optional .npy label array (N,)."""

    def _read(self) -> None:
        path = _need_path(self.spec.path, "NPY file")
        try:
            self._x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise SourceError(f"NPY file {str(path)!r} is unreadable: {exc}") from exc
        if self._x.ndim < 2:
            raise SourceError(
                f"NPY file {str(path)!r} has shape {self._x.shape}; expected (N, ...)"
                " with one item per row"
            )
        if self.spec.labels_path:
            lp = _need_path(self.spec.labels_path, "NPY label file")
            self._y = _check_labels(np.load(lp, allow_pickle=False), len(self._x), lp)
        self.prefix = f"{path.stem}-"


class NpzSource(_ArraySource):
    """A .npz holding ``x`` (or data/X/images), optional ``y`` (or labels) and ``ids``."""

    def _read(self) -> None:
        path = _need_path(self.spec.path, "NPZ file")
        try:
            z = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise SourceError(f"NPZ file {str(path)!r} is unreadable: {exc}") from exc
        xk = next((k for k in _NPZ_X if k in z.files), None)
        if xk is None:
            raise SourceError(
                f"NPZ file {str(path)!r} has arrays {z.files}; expected one named "
                f"{' or '.join(_NPZ_X)}"
            )
        self._x = z[xk]
        if self._x.ndim < 2:
            raise SourceError(
                f"NPZ array {xk!r} in {str(path)!r} has shape {self._x.shape}; expected (N, ...)"
            )
        yk = next((k for k in _NPZ_Y if k in z.files), None)
        if yk is not None:
            self._y = _check_labels(z[yk], len(self._x), path)
        if "ids" in z.files:
            ids = z["ids"]
            if ids.shape != (len(self._x),):
                raise SourceError(
                    f"NPZ array 'ids' in {str(path)!r} has shape {ids.shape}; "
                    f"expected ({len(self._x)},)"
                )
            self._ids = np.asarray([str(i) for i in ids], dtype=object)
        self.prefix = f"{path.stem}-"


class ParquetSource(_ArraySource):
    """Feature vectors in Parquet (a file or a folder of files)."""

    def _read(self) -> None:
        path = _need_path(self.spec.path, "Parquet source")
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - any reader failure: name the file
            raise SourceError(f"Parquet source {str(path)!r} is unreadable: {exc}") from exc
        lab, idc = self.spec.label_column, self.spec.id_column
        if self.spec.feature_columns:
            missing = [c for c in self.spec.feature_columns if c not in df.columns]
            if missing:
                raise SourceError(
                    f"Parquet source {str(path)!r} lacks feature columns {missing}; "
                    f"it has {list(df.columns)}"
                )
            cols = list(self.spec.feature_columns)
        else:
            cols = [
                c
                for c in df.columns
                if c not in (lab, idc) and pd.api.types.is_numeric_dtype(df[c])
            ]
        if not cols:
            raise SourceError(
                f"Parquet source {str(path)!r} has no numeric feature column "
                f"(columns: {list(df.columns)})"
            )
        self._x = df[cols].to_numpy(dtype=np.float32, na_value=np.nan)
        self._bad_label: dict[int, str] = {}
        if lab and lab in df.columns:
            raw = df[lab]
            y = np.full(len(df), -1, dtype=np.int64)
            for i, v in enumerate(raw.tolist()):
                if v is None or (isinstance(v, float) and np.isnan(v)):
                    continue
                try:
                    fv = float(v)
                    if fv != int(fv) or fv < -1:
                        raise ValueError
                    y[i] = int(fv)
                except (TypeError, ValueError):
                    self._bad_label[i] = f"label {v!r} is not an integer >= -1"
            self._y = y
        if idc and idc in df.columns:
            self._ids = np.asarray(
                ["" if v is None else str(v) for v in df[idc].tolist()], dtype=object
            )
        self.prefix = f"{path.stem}-"

    def scan(self) -> ScanResult:
        res = super().scan()
        if getattr(self, "_bad_label", None):
            bad = {f"{self.ref_base}#{i}": r for i, r in self._bad_label.items()}
            keep = ~res.items["source_ref"].isin(list(bad))
            res.rejected.extend(
                (ref, r) for ref, r in bad.items() if ref in set(res.items["source_ref"])
            )
            res.items = res.items[keep].reset_index(drop=True)
            res = _fail_if_empty(self.spec, res)
        return res


def _check_labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise SourceError(
            f"labels in {str(path)!r} have shape {y.shape} dtype {y.dtype}; "
            f"expected ({n},) integers (-1 = unlabeled)"
        )
    return y.astype(np.int64)


# ---------------------------------------------------------------------------- image folder
class ImageFolderSource(Source):
    """PNG/JPEG files under a folder (recursive), with an optional labels CSV."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.root = _need_path(spec.path, "image folder")
        if not self.root.is_dir():
            raise SourceError(f"image folder {str(self.root)!r} is not a folder")

    def _labels(self) -> dict[str, tuple[str, str]]:
        """sample_id -> (raw label, split) from the CSV."""
        if not self.spec.labels_path:
            return {}
        path = _need_path(self.spec.labels_path, "labels CSV")
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if "sample_id" not in cols or "label" not in cols:
                raise SourceError(
                    f"labels CSV {str(path)!r} has columns {cols}; expected at least "
                    "'sample_id' and 'label' (optional 'split')"
                )
            return {row["sample_id"]: (row["label"], row.get("split") or "all") for row in reader}

    @staticmethod
    def _decode(path: Path) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I", "F"):
                raise ValueError(f"pixel mode {im.mode} (16/32-bit); valid: 8-bit L, RGB or RGBA")
            if im.mode == "P":
                im = im.convert("RGB")
            if im.mode == "LA":
                im = im.convert("L")
            return np.asarray(im, dtype=np.uint8)

    def scan(self) -> ScanResult:
        files = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        labels = self._labels()
        decoded: list[tuple[str, str, np.ndarray]] = []
        rejected: list[tuple[str, str]] = []
        seen: set[str] = set()
        from tqdm.auto import tqdm

        # decoding every file is the slow part of a scan: a terminal bar for big folders
        for p in tqdm(files, desc="scan", unit="file", disable=len(files) < 1000):
            ref = p.relative_to(self.root).as_posix()
            sid = str(Path(ref).with_suffix(""))
            if sid in seen:
                rejected.append(
                    (
                        ref,
                        f"duplicate sample id {sid!r} (another file has the same "
                        "name with a different extension)",
                    )
                )
                continue
            seen.add(sid)
            try:
                arr = self._decode(p)
            except Exception as exc:  # noqa: BLE001 - any decoder error is a bad item
                rejected.append((ref, f"cannot decode image: {type(exc).__name__}: {exc}"))
                continue
            decoded.append((sid, ref, arr))
        if not decoded:
            return _fail_if_empty(
                self.spec, ScanResult(_frame([], [], [], "all"), rejected, (), len(files))
            )
        shapes = Counter(a.shape for _, _, a in decoded)
        if self.spec.image_size is not None:
            hw = tuple(self.spec.image_size)
            chans = Counter(a.shape[2:] for _, _, a in decoded if a.shape[:2] == hw)
            want = hw + (chans.most_common(1)[0][0] if chans else ())
        else:
            want = shapes.most_common(1)[0][0]
        ids, refs, labs, splits = [], [], [], []
        for sid, ref, arr in decoded:
            if arr.shape != want:
                what = "channels" if arr.shape[:2] == want[:2] else "size"
                rejected.append(
                    (ref, f"unexpected {what}: shape {arr.shape}; expected {want} (H, W[, C])")
                )
                continue
            raw, split = labels.get(sid, ("", "all"))
            lab = -1
            if raw.strip():
                try:
                    lab = int(raw)
                    if lab < -1:
                        raise ValueError
                except ValueError:
                    rejected.append(
                        (ref, f"label {raw!r} in the labels CSV is not an integer >= -1")
                    )
                    continue
            ids.append(sid)
            refs.append(ref)
            labs.append(lab)
            splits.append(split)
        res = ScanResult(
            _frame(ids, refs, labs, splits), rejected, tuple(int(s) for s in want), len(files)
        )
        return _fail_if_empty(self.spec, res)

    def load(self, refs: Sequence[str]) -> np.ndarray:
        """Images (N, H, W) for grayscale, (N, C, H, W) for colour (channels first)."""
        if not len(refs):
            return np.empty((0,), dtype=np.uint8)
        x = np.stack([self._decode(self.root / r) for r in refs])
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


_KINDS = {
    "mnist": MnistSource,
    "idx": IdxSource,
    "npy": NpySource,
    "npz": NpzSource,
    "parquet": ParquetSource,
    "image_folder": ImageFolderSource,
}


def open_source(spec: SourceSpec | dict) -> Source:
    """A :class:`Source` for ``spec``; raises :class:`SourceError` when its path is missing."""
    if isinstance(spec, dict):
        spec = SourceSpec.model_validate(spec)
    return _KINDS[spec.kind](spec)


# ---------------------------------------------------------------------------- selection
def select(items: pd.DataFrame, spec: SampleSpec, seen_ids: set[str] | None = None) -> pd.DataFrame:
    """Apply the sample mode to the accepted items; returns a manifest frame (order kept).

    all: every item; uniform: ``n`` items drawn without replacement; stratified: ``n`` items
    with each label's share kept (unlabeled rows are their own stratum); incremental: items
    whose sample_id is not in ``seen_ids`` (at most ``n`` when given).
    """
    rng = np.random.default_rng(spec.seed)
    n_all = len(items)
    if spec.mode == "all":
        out = items
    elif spec.mode == "uniform":
        k = min(int(spec.n or n_all), n_all)
        out = items.iloc[np.sort(rng.choice(n_all, size=k, replace=False))]
    elif spec.mode == "stratified":
        k = min(int(spec.n or n_all), n_all)
        labels = items["label"].to_numpy()
        classes, counts = np.unique(labels, return_counts=True)
        quota = np.floor(counts / n_all * k).astype(int)
        rest = k - quota.sum()
        order = np.argsort(-(counts / n_all * k - quota))
        quota[order[:rest]] += 1
        picks = [
            rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
            for c, q in zip(classes, quota)
            if q > 0
        ]
        out = items.iloc[np.sort(np.concatenate(picks))] if picks else items.iloc[:0]
    elif spec.mode == "incremental":
        seen_ids = seen_ids or set()
        out = items[~items["sample_id"].isin(list(seen_ids))] if seen_ids else items
        if spec.n is not None and len(out) > spec.n:
            out = out.iloc[: spec.n]
    else:  # pragma: no cover - guarded by the contract
        raise ValueError(f"sample mode {spec.mode!r}")
    return out.reset_index(drop=True)


def manifest_hash(df: pd.DataFrame) -> str:
    """SHA-256 over the manifest rows (sample_id, source_ref, label, split), in order."""
    h = hashlib.sha256()
    for col in ("sample_id", "source_ref", "label", "split"):
        h.update(col.encode())
        h.update("\x1f".join(map(str, df[col].tolist())).encode())
    return h.hexdigest()
