"""The time-series source (kind ``"timeseries"``): multivariate series as ``(T, C)`` items.

Two layouts, chosen by the file name:

* ``.npy`` array ``(N, T, C)`` (``labels_path`` = optional ``.npy`` ``(N,)`` integer labels), or
  ``.npz`` with ``x`` (or ``data``/``X``), optional ``y`` (or ``labels``) and ``ids``. Shorter
  series may be padded at the END with NaN in every channel (the usual way to store unequal
  lengths in one array); those trailing all-NaN steps are not part of the series.
* ``.parquet`` (a file or a folder of files) in long format, one row per time step:
  ``series_id`` (or ``id_column`` when it names an existing column), ``t`` (numeric; rows are
  ordered by it), the channel columns (``feature_columns``, default every other numeric
  column), and optionally ``label_column`` (constant within a series).

Unequal lengths are RESAMPLED, not padded: every accepted series is linearly interpolated
(:mod:`sqflow.resample`) to the most common length among the series that pass the value checks
(ties: the longer). Resampling keeps a series' whole course and needs no mask in the encoder;
the 1-D encoder in turn resamples to the length it was trained on, so nights with another
common length embed consistently.

Per-item checks (a failing series is quarantined with its reason, the rest go on): a value is
NaN or infinite (other than the trailing padding), the series has fewer than 2 steps (no course
to resample: the "wrong length" of a series), a time step is repeated (Parquet), a value is
outside ``value_range`` when set, the label is not an integer >= -1 or varies within the series,
the id is empty or repeated. The manifest's ``source_ref`` is ``<file name>#<index of the series
in the file>``; :meth:`TimeSeriesSource.load` returns float32 ``(n, L, C)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from data_contracts.manifest import SourceSpec

from .resample import resample_series
from .sources import ScanResult, Source, SourceError, _fail_if_empty, _frame, _need_path

__all__ = ["TimeSeriesSource", "TIME_COLUMN", "SERIES_ID_COLUMNS"]

TIME_COLUMN = "t"
#: id column of the long format: ``id_column`` when the table has it, else ``series_id``
SERIES_ID_COLUMNS = ("series_id",)
_NPZ_X = ("x", "X", "data")
_NPZ_Y = ("y", "labels", "label")


class TimeSeriesSource(Source):
    """Multivariate time series from ``.npy``/``.npz`` or long-format Parquet; see the module."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.path = _need_path(spec.path, "time-series source")
        self._series: list[np.ndarray] | None = None  # each (T_i, C) float64, padding removed
        self._ids: list[str] = []
        self._labels: np.ndarray = np.zeros(0, dtype=np.int64)
        self._reasons: dict[int, str] = {}  # index -> first reason found while reading
        self._length: int | None = None

    # ------------------------------------------------------------------ reading
    def _read(self) -> None:
        suffix = self.path.suffix.lower()
        if suffix in (".npy", ".npz"):
            self._read_array(suffix)
        elif suffix == ".parquet" or self.path.is_dir():
            self._read_long()
        else:
            raise SourceError(
                f"time-series source {str(self.path)!r}: unknown file type {suffix!r}; valid: "
                ".npy / .npz array (N, T, C) or a long-format .parquet file or folder"
            )
        self._check_values()

    def _read_array(self, suffix: str) -> None:
        path = self.path
        y = None
        ids = None
        try:
            if suffix == ".npy":
                x = np.load(path, allow_pickle=False)
            else:
                z = np.load(path, allow_pickle=False)
                xk = next((k for k in _NPZ_X if k in z.files), None)
                if xk is None:
                    raise SourceError(
                        f"NPZ file {str(path)!r} has arrays {z.files}; expected one named "
                        f"{' or '.join(_NPZ_X)} with shape (N, T, C)"
                    )
                x = z[xk]
                yk = next((k for k in _NPZ_Y if k in z.files), None)
                y = z[yk] if yk is not None else None
                ids = z["ids"] if "ids" in z.files else None
        except (ValueError, OSError) as exc:
            raise SourceError(f"time-series file {str(path)!r} is unreadable: {exc}") from exc
        if x.ndim == 2:  # (N, T): one channel
            x = x[:, :, None]
        if x.ndim != 3 or x.dtype.kind not in "uif":
            raise SourceError(
                f"time-series array in {str(path)!r} has shape {x.shape} dtype {x.dtype}; "
                "expected numeric (N, T, C) (or (N, T) for one channel)"
            )
        if self.spec.labels_path:
            lp = _need_path(self.spec.labels_path, "NPY label file")
            y = np.load(lp, allow_pickle=False)
        n = len(x)
        if y is not None and (y.shape != (n,) or y.dtype.kind not in "iu"):
            raise SourceError(
                f"labels of {str(path)!r} have shape {y.shape} dtype {y.dtype}; expected ({n},) "
                "integers (-1 = unlabeled)"
            )
        if ids is not None and ids.shape != (n,):
            raise SourceError(f"NPZ array 'ids' in {str(path)!r} has shape {ids.shape}; ({n},)")
        xf = x.astype(np.float64)
        series = []
        for row in xf:
            # trailing steps that are NaN in every channel are padding, not data
            pad = np.isnan(row).all(axis=1)
            keep = len(row) - (np.argmin(pad[::-1]) if not pad.all() else len(row))
            series.append(row[:keep])
        self._series = series
        stem = path.stem
        self._ids = (
            [str(i) for i in ids] if ids is not None else [f"{stem}-{i:06d}" for i in range(n)]
        )
        self._labels = np.full(n, -1, dtype=np.int64) if y is None else y.astype(np.int64)
        for i in np.flatnonzero(self._labels < -1):
            self._reasons.setdefault(int(i), f"label {int(self._labels[i])} is not >= -1")

    def _read_long(self) -> None:
        path = self.path
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - any reader failure: name the file
            raise SourceError(f"Parquet source {str(path)!r} is unreadable: {exc}") from exc
        idc = self.spec.id_column if self.spec.id_column in df.columns else None
        idc = idc or next((c for c in SERIES_ID_COLUMNS if c in df.columns), None)
        if idc is None or TIME_COLUMN not in df.columns:
            raise SourceError(
                f"long-format Parquet {str(path)!r} has columns {list(df.columns)}; expected "
                f"'series_id' (or id_column={self.spec.id_column!r}), {TIME_COLUMN!r} and "
                "channel columns"
            )
        if not pd.api.types.is_numeric_dtype(df[TIME_COLUMN]):
            raise SourceError(
                f"column {TIME_COLUMN!r} of {str(path)!r} has dtype {df[TIME_COLUMN].dtype}; "
                "expected numbers (time step or seconds)"
            )
        lab = self.spec.label_column if self.spec.label_column in df.columns else None
        if self.spec.feature_columns:
            missing = [c for c in self.spec.feature_columns if c not in df.columns]
            if missing:
                raise SourceError(
                    f"Parquet source {str(path)!r} lacks channel columns {missing}; it has "
                    f"{list(df.columns)}"
                )
            chans = list(self.spec.feature_columns)
        else:
            chans = [
                c
                for c in df.columns
                if c not in (idc, TIME_COLUMN, lab) and pd.api.types.is_numeric_dtype(df[c])
            ]
        if not chans:
            raise SourceError(f"Parquet source {str(path)!r} has no numeric channel column")
        # first appearance order of the series, steps ordered by t (stable for equal t)
        df = df.assign(_sid=df[idc].astype("string").fillna(""))
        order = pd.unique(df["_sid"])
        df["_pos"] = pd.Categorical(df["_sid"], categories=order).codes
        df = df.sort_values(["_pos", TIME_COLUMN], kind="stable")
        vals = df[chans].to_numpy(dtype=np.float64, na_value=np.nan)
        tvals = df[TIME_COLUMN].to_numpy(dtype=np.float64)
        bounds = np.flatnonzero(np.diff(df["_pos"].to_numpy())) + 1
        starts = np.concatenate([[0], bounds])
        stops = np.concatenate([bounds, [len(df)]])
        raw_labels = df[lab].tolist() if lab else None
        self._series, self._ids = [], []
        labels = []
        for i, (a, b) in enumerate(zip(starts, stops, strict=True)):
            self._series.append(vals[a:b])
            self._ids.append(str(order[i]))
            tt = tvals[a:b]
            if not np.isfinite(tt).all():
                self._reasons.setdefault(i, f"column {TIME_COLUMN!r} is NaN or infinite")
            elif np.any(np.diff(tt) == 0):
                dup = tt[1:][np.diff(tt) == 0][0]
                self._reasons.setdefault(i, f"time step {TIME_COLUMN}={dup:g} is repeated")
            labels.append(-1 if raw_labels is None else self._series_label(i, raw_labels[a:b]))
        self._labels = np.asarray(labels, dtype=np.int64)

    def _series_label(self, i: int, raw: list) -> int:
        present = {v for v in raw if not (v is None or (isinstance(v, float) and np.isnan(v)))}
        if not present:
            return -1
        if len(present) > 1:
            self._reasons.setdefault(
                i, f"label varies within the series: {sorted(map(str, present))}"
            )
            return -1
        v = present.pop()
        try:
            fv = float(v)
            if fv != int(fv) or fv < -1:
                raise ValueError
            return int(fv)
        except (TypeError, ValueError):
            self._reasons.setdefault(i, f"label {v!r} is not an integer >= -1")
            return -1

    def _check_values(self) -> None:
        assert self._series is not None
        rng = self.spec.value_range
        for i, s in enumerate(self._series):
            if len(s) < 2:
                self._reasons.setdefault(
                    i, f"series has {len(s)} time step(s); need >= 2 (wrong length)"
                )
            elif not np.isfinite(s).all():
                step, ch = np.argwhere(~np.isfinite(s))[0]
                self._reasons.setdefault(
                    i, f"value is NaN or infinite (step {int(step)}, channel {int(ch)})"
                )
            elif rng is not None and ((s < rng[0]) | (s > rng[1])).any():
                self._reasons.setdefault(i, f"value out of range [{rng[0]:g}, {rng[1]:g}]")
        ok_lengths = [len(s) for i, s in enumerate(self._series) if i not in self._reasons]
        if ok_lengths:
            counts = Counter(ok_lengths)
            self._length = max(counts, key=lambda n: (counts[n], n))

    def _loaded(self) -> list[np.ndarray]:
        if self._series is None:
            self._read()
        assert self._series is not None
        return self._series

    # ------------------------------------------------------------------ Source API
    @property
    def ref_base(self) -> str:
        return self.path.name

    @property
    def series_length(self) -> int | None:
        """Length every accepted series is resampled to (None: no series passed the checks)."""
        self._loaded()
        return self._length

    def scan(self) -> ScanResult:
        series = self._loaded()
        n = len(series)
        reasons = dict(self._reasons)
        seen: set[str] = set()
        for i, sid in enumerate(self._ids):
            if not sid:
                reasons.setdefault(i, "empty series id")
            elif sid in seen:
                reasons.setdefault(i, f"duplicate series id {sid!r}")
            seen.add(sid)
        idx = [i for i in range(n) if i not in reasons]
        items = _frame(
            (self._ids[i] for i in idx),
            (f"{self.ref_base}#{i}" for i in idx),
            self._labels[idx] if idx else [],
            "all",
        )
        n_ch = int(series[0].shape[1]) if n else 0
        shape = (int(self._length), n_ch) if self._length else ()
        rejected = [(f"{self.ref_base}#{i}", r) for i, r in sorted(reasons.items())]
        return _fail_if_empty(self.spec, ScanResult(items, rejected, shape, n))

    def load(self, refs: Sequence[str]) -> np.ndarray:
        """Series of ``refs`` as float32 ``(n, L, C)``, resampled to :attr:`series_length`."""
        series = self._loaded()
        n_ch = int(series[0].shape[1]) if series else 0
        if self._length is None:
            raise SourceError(f"time-series source {str(self.path)!r} has no valid series")
        out = np.empty((len(refs), self._length, n_ch), dtype=np.float32)
        for j, ref in enumerate(refs):
            base, _, pos = str(ref).rpartition("#")
            if base != self.ref_base or not pos.isdigit() or int(pos) >= len(series):
                raise SourceError(
                    f"reference {ref!r} does not name a series of {str(self.path)!r} "
                    f"(expected '{self.ref_base}#<index below {len(series)}>')"
                )
            out[j] = resample_series(series[int(pos)], self._length)
        return out
