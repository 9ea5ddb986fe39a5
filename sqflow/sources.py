"""Readers of the pipeline's sources and the sample selection (plain Python, no Prefect).

A :class:`Source` (built from a :class:`data_contracts.manifest.SourceSpec`) does two things:

* :meth:`Source.scan` checks EVERY item (it decodes, has the expected size/channels, values in
  range and finite, id not a duplicate, label an integer) and returns the accepted items as a
  manifest frame plus a ``(sample_ref, reason)`` list of the refused ones (quarantine);
* :meth:`Source.load` returns the data of accepted items by their ``source_ref``, in order.

A fault of ONE item (undecodable file name, label out of range or not an integer, a text cell in a
numeric feature column, a special file, a symlink leaving the image folder, ...) quarantines that
item with a reason naming it; the run goes on. A fault of the SOURCE (missing, unreadable, a
configured column that does not exist, a labels CSV that is not UTF-8, no valid item at all)
raises :class:`SourceError` naming the file. Source-level oddities a run can live with (a labels
CSV matching no image, text columns left out of the features) are returned as
``ScanResult.warnings`` and logged. README "Sources, quarantine and settings" has the table.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import stat
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


_I64_MAX = int(np.iinfo(np.int64).max)
_LABEL_RULE = f"valid: -1 (unlabeled) or an integer 0..{_I64_MAX}"


class SourceError(RuntimeError):
    """The source as a whole cannot be used (missing, unreadable, or no valid item)."""


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes of a file name that is not UTF-8 (Python keeps them as
    lone surrogates) are shown as ``\\xNN`` escapes, so refs and reasons can be written to
    Parquet and logs."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that did not come from a file name
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class ScanResult:
    """Output of :meth:`Source.scan`."""

    items: pd.DataFrame  # MANIFEST_COLUMNS
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (sample_ref, reason)
    item_shape: tuple[int, ...] = ()
    n_scanned: int = 0
    warnings: list[str] = field(default_factory=list)  # source-level, the run goes on

    def __post_init__(self) -> None:
        # the quarantine is written to Parquet: every ref and reason must be valid UTF-8
        self.rejected = [(printable(r), printable(why)) for r, why in self.rejected]
        self.warnings = [printable(w) for w in self.warnings]


def parse_label(value: object) -> int:
    """One raw label as int64: ``None``, NaN and empty text are -1 (unlabeled).

    Raises ``ValueError`` with the reason (``label not an integer: ...`` or ``label out of
    range: ...``) for anything else that is not an integer in -1..2**63-1.
    """
    if value is None or value is pd.NA:  # pd.NA: missing cell of a nullable column
        return -1
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        raise ValueError(f"label not an integer: {value!r}; {_LABEL_RULE}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return -1
        try:
            iv = int(text)
        except ValueError:
            try:  # "3.0" (a float column written as text) is 3; "1e30" is out of range
                number = float(text)
            except ValueError:
                raise ValueError(f"label not an integer: {value!r}; {_LABEL_RULE}") from None
            if not np.isfinite(number) or number != np.floor(number):
                raise ValueError(f"label not an integer: {value!r}; {_LABEL_RULE}") from None
            iv = int(number)
    elif isinstance(value, int):
        iv = value
    elif isinstance(value, float):
        if np.isnan(value):
            return -1
        if not np.isfinite(value) or value != np.floor(value):
            raise ValueError(f"label not an integer: {value!r}; {_LABEL_RULE}")
        iv = int(value)
    else:
        raise ValueError(
            f"label not an integer: {printable(repr(value))[:80]} ({type(value).__name__}); "
            f"{_LABEL_RULE}"
        )
    if iv < -1 or iv > _I64_MAX:
        raise ValueError(f"label out of range: {value!r}; {_LABEL_RULE}")
    return iv


def parse_labels(values: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """Labels (N,) of any dtype -> (int64 labels with -1 where missing or bad, {row: reason}).

    Integer and float arrays are checked vectorized; text/object arrays value by value.
    """
    values = np.asarray(values)
    n = len(values)
    out = np.full(n, -1, dtype=np.int64)
    if values.dtype.kind == "b":
        suspects = np.arange(n)  # every value: "not an integer"
    elif values.dtype.kind in "iu":
        ok = values >= -1 if values.dtype.kind == "i" else values <= _I64_MAX
        out[ok] = values[ok].astype(np.int64)
        suspects = np.flatnonzero(~ok)
    elif values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            fine = (
                np.isfinite(values)
                & (values == np.floor(values))
                & (values >= -1)
                & (values < 2.0**63)
            )
        out[fine] = values[fine].astype(np.int64)
        suspects = np.flatnonzero(~fine & ~np.isnan(values))
    else:
        suspects = np.arange(n)
    bad: dict[int, str] = {}
    for i in suspects:
        try:
            out[i] = parse_label(values[i])
        except ValueError as exc:
            bad[int(i)] = str(exc)
    return out, bad


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
        self._bad: dict[int, str] = {}  # row -> reason, found while reading (labels, cells)
        self._warnings: list[str] = []

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
        reasons: dict[int, str] = dict(self._bad)
        ok[list(reasons)] = False
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
                    reasons.setdefault(lo + i, "value is NaN or infinite")
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
            elif printable(sid) != sid:
                ok[i] = False
                reasons.setdefault(i, f"sample id is not valid UTF-8: {printable(sid)!r}")
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
        for w in self._warnings:
            log.warning("%s", w)
        return _fail_if_empty(
            self.spec,
            ScanResult(
                items, rejected, tuple(int(s) for s in x.shape[1:]), n, list(self._warnings)
            ),
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
            self._y, self._bad = _check_labels(np.load(lp, allow_pickle=False), len(self._x), lp)
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
            self._y, self._bad = _check_labels(z[yk], len(self._x), path)
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
    """Feature vectors in Parquet (a file or a folder of files).

    Feature columns: ``feature_columns``, or every column but ``label_column``/``id_column``.
    A column is numeric when its Parquet type is numeric (or boolean), or when it holds text of
    which most non-empty cells parse as numbers; a cell of such a column that does not parse
    quarantines its row. A column that is mostly text is a schema problem: listed in
    ``feature_columns`` it fails the source naming the column; found by auto-detection it is
    left out of the features with a warning naming it.
    """

    def _read(self) -> None:
        path = _need_path(self.spec.path, "Parquet source")
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - any reader failure: name the file
            raise SourceError(f"Parquet source {str(path)!r} is unreadable: {exc}") from exc
        lab, idc = self.spec.label_column, self.spec.id_column
        for what, col, default in (("label_column", lab, "label"), ("id_column", idc, "sample_id")):
            # the default names may be absent (unlabeled data, row-number ids); a name the user
            # configured must exist, or every row would silently lose its label or id
            if col and col != default and col not in df.columns:
                raise SourceError(
                    f"Parquet source {str(path)!r} has no column {col!r} (source.{what}); "
                    f"it has {list(df.columns)}"
                )
        if self.spec.feature_columns:
            missing = [c for c in self.spec.feature_columns if c not in df.columns]
            if missing:
                raise SourceError(
                    f"Parquet source {str(path)!r} lacks feature columns {missing}; "
                    f"it has {list(df.columns)}"
                )
            cols = list(self.spec.feature_columns)
        else:
            cols = [c for c in df.columns if c not in (lab, idc)]
        features, text = [], {}
        for c in cols:
            values, bad_rows = _numeric_column(df[c])
            if values is None:
                text[c] = bad_rows
                continue
            features.append(values)
            for i, cell in bad_rows.items():
                self._bad.setdefault(
                    i, f"feature not a number: column {c!r} holds {printable(repr(cell))[:80]}"
                )
        if text and self.spec.feature_columns:
            c, example = next(iter(text.items()))
            raise SourceError(
                f"Parquet source {str(path)!r}: feature column {c!r} holds text "
                f"(e.g. {example!r}), not numbers; fix the data or leave the column out of "
                "source.feature_columns"
            )
        if text:
            self._warnings.append(
                f"Parquet source {str(path)!r}: columns {list(text)} are not numeric (e.g. "
                f"{next(iter(text.values()))!r}) and are left out of the features; list the "
                "features in source.feature_columns to make this explicit"
            )
        if not features:
            raise SourceError(
                f"Parquet source {str(path)!r} has no numeric feature column "
                f"(columns: {list(df.columns)})"
            )
        self._x = np.stack(features, axis=1)
        if lab and lab in df.columns:
            self._y, bad = parse_labels(df[lab].to_numpy())
            for i, why in bad.items():
                self._bad.setdefault(i, why)
        if idc and idc in df.columns:
            self._ids = np.asarray(
                ["" if v is None else str(v) for v in df[idc].tolist()], dtype=object
            )
        self.prefix = f"{path.stem}-"


def _numeric_column(col: pd.Series) -> tuple[np.ndarray | None, dict]:
    """(float32 values, {row: cell that is not a number}) of a feature column, or
    ``(None, example)`` when the column is text rather than numbers (see :class:`ParquetSource`).
    """
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float32, na_value=np.nan), {}
    if not (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)):
        return None, str(col.dtype)  # dates, lists, categories: not a feature
    try:
        num = pd.to_numeric(col, errors="coerce")
    except (TypeError, ValueError):  # nested values (lists, dicts)
        return None, printable(repr(col.dropna().iloc[0]))[:40] if col.notna().any() else ""
    present = col.notna() & (col.astype(str).str.strip() != "")
    bad = present & num.isna()
    if not present.any() or bad.sum() * 2 > present.sum():
        return None, printable(repr(col[bad].iloc[0] if bad.any() else ""))[:40]
    rows = np.flatnonzero(bad.to_numpy())
    cells = col.to_numpy()
    return num.to_numpy(dtype=np.float32, na_value=np.nan), {int(i): cells[i] for i in rows}


def _check_labels(y: np.ndarray, n: int, path: Path) -> tuple[np.ndarray, dict[int, str]]:
    """A label array of the source: its shape is a source-level fault, a bad value a row's."""
    if y.shape != (n,) or y.dtype.kind not in "biufUSO":
        raise SourceError(
            f"labels in {str(path)!r} have shape {y.shape} dtype {y.dtype}; "
            f"expected ({n},) integers (-1 = unlabeled)"
        )
    return parse_labels(y)


# ---------------------------------------------------------------------------- image folder
class ImageFolderSource(Source):
    """PNG/JPEG files under a folder (recursive), with an optional labels CSV.

    Every entry whose name ends in an image suffix is an item. It is quarantined when its
    name is not valid UTF-8, when it is not a regular file (a FIFO, socket, device, or a folder
    named like an image), when it is a dangling symlink or a symlink whose target lies outside
    the image folder (a source must not publish files from elsewhere), and when it does not
    decode or has another size/channel count. Symlinked folders are not descended into.
    """

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.root = _need_path(spec.path, "image folder")
        if not self.root.is_dir():
            raise SourceError(f"image folder {str(self.root)!r} is not a folder")
        self._real_root = self.root.resolve()

    def _labels(self) -> dict[str, tuple[str, str]]:
        """sample_id -> (raw label, split) from the CSV."""
        if not self.spec.labels_path:
            return {}
        path = _need_path(self.spec.labels_path, "labels CSV")
        try:
            # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                cols = reader.fieldnames or []
                if "sample_id" not in cols or "label" not in cols:
                    raise SourceError(
                        f"labels CSV {str(path)!r} has columns {cols}; expected at least "
                        "'sample_id' and 'label' (optional 'split')"
                    )
                return {
                    row["sample_id"]: (row.get("label") or "", row.get("split") or "all")
                    for row in reader
                    if row.get("sample_id")
                }
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"labels CSV {str(path)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                f"at offset {exc.start}); save it as UTF-8"
            ) from exc
        except csv.Error as exc:
            raise SourceError(f"labels CSV {str(path)!r} is not a valid CSV: {exc}") from exc

    def _refusal(self, p: Path) -> str | None:
        """Why the entry ``p`` (named like an image) is not a readable image file, or None."""
        try:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(p)
                try:
                    real = p.resolve(strict=True)
                except FileNotFoundError:
                    return f"dangling symlink: its target {target!r} does not exist"
                except (OSError, RuntimeError) as exc:  # a loop of links
                    return f"symlink cannot be resolved: {target!r} ({exc})"
                if not real.is_relative_to(self._real_root):
                    return f"symlink leaves the image folder: it points to {str(real)!r}"
                st = os.stat(real)
        except OSError as exc:
            return f"cannot read file: {type(exc).__name__}: {exc}"
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return None
        if stat.S_ISDIR(mode):
            what = "a folder named like an image"
        elif stat.S_ISFIFO(mode):
            what = "a FIFO (named pipe)"
        elif stat.S_ISSOCK(mode):
            what = "a socket"
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            what = "a device"
        else:
            what = f"file type {stat.S_IFMT(mode):o}"
        return f"not a regular file: {what}"

    def _entries(self) -> list[Path]:
        """Every entry under the root whose name ends in an image suffix, sorted by path."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            out.extend(
                Path(dirpath) / name
                for name in dirnames + filenames
                if Path(name).suffix.lower() in IMAGE_SUFFIXES
            )
        return sorted(out)

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

    def _labels_warning(self, labels: dict[str, tuple[str, str]], sids: set[str]) -> str | None:
        if not labels or labels.keys() & sids:
            return None
        hint = ""
        stripped = {str(Path(k).with_suffix("")) for k in labels}
        if stripped & sids:
            hint = " (its ids carry a file extension; write them without it, e.g. 'line1/img7')"
        example = next(iter(labels))
        return (
            f"labels CSV {str(self.spec.labels_path)!r}: none of its {len(labels)} sample ids "
            f"(e.g. {example!r}) matches an image in {str(self.root)!r}; every image is "
            f"unlabeled{hint}. Sample ids are paths relative to the folder without the extension"
        )

    def scan(self) -> ScanResult:
        entries = self._entries()
        labels = self._labels()
        decoded: list[tuple[str, str, np.ndarray]] = []
        rejected: list[tuple[str, str]] = []
        seen: set[str] = set()
        from tqdm.auto import tqdm

        # decoding every file is the slow part of a scan: a terminal bar for big folders
        for p in tqdm(entries, desc="scan", unit="file", disable=len(entries) < 1000):
            ref = p.relative_to(self.root).as_posix()
            if printable(ref) != ref:
                rejected.append(
                    (ref, "file name is not valid UTF-8 (shown with \\x escapes); rename it")
                )
                continue
            why = self._refusal(p)
            if why is not None:
                rejected.append((ref, why))
                continue
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
        warnings = [w for w in [self._labels_warning(labels, seen)] if w]
        for w in warnings:
            log.warning("%s", w)
        if not decoded:
            return _fail_if_empty(
                self.spec,
                ScanResult(_frame([], [], [], "all"), rejected, (), len(entries), warnings),
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
            try:
                lab = parse_label(raw)
            except ValueError as exc:
                rejected.append((ref, f"{exc} (labels CSV)"))
                continue
            ids.append(sid)
            refs.append(ref)
            labs.append(lab)
            splits.append(split)
        res = ScanResult(
            _frame(ids, refs, labs, splits),
            rejected,
            tuple(int(s) for s in want),
            len(entries),
            warnings,
        )
        return _fail_if_empty(self.spec, res)

    def load(self, refs: Sequence[str]) -> np.ndarray:
        """Images (N, H, W) for grayscale, (N, C, H, W) for colour (channels first).

        Each file is checked again as in the scan (a file replaced by a FIFO or an outside
        symlink since then raises :class:`SourceError` naming it rather than hang or leak)."""
        if not len(refs):
            return np.empty((0,), dtype=np.uint8)
        arrays = []
        for r in refs:
            p = self.root / r
            why = self._refusal(p)
            if why is not None:
                raise SourceError(f"image {str(p)!r} changed since the scan: {why}")
            arrays.append(self._decode(p))
        x = np.stack(arrays)
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
    if spec.kind == "timeseries":
        from .sources_timeseries import TimeSeriesSource

        return TimeSeriesSource(spec)
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
