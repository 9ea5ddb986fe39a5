"""Progress of a long loop, for a terminal or for whoever watches (no Prefect here).

``progress`` arguments of engine functions accept ``False`` (silent), ``True`` (a tqdm bar on
the terminal) or a callable ``report(done, total)`` (units done so far and the total, both
ints), which a caller such as a Prefect task turns into a progress artifact. A callable that
raises never stops the work: its error is logged once and it is not called again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressArg", "progress_bar"]

#: what an engine function's ``progress`` argument accepts
ProgressArg = bool | Callable[[int, int], Any]

log = logging.getLogger(__name__)


class _CallbackBar:
    """The part of tqdm's interface the engine uses (``update``, ``close``), reporting to a
    callable and showing a terminal bar too."""

    def __init__(self, report: Callable[[int, int], Any], total: int, desc: str, unit: str):
        from tqdm.auto import tqdm

        self.report, self.total, self.done = report, int(total), 0
        self.bar = tqdm(total=total, desc=desc, unit=unit)
        self._call()

    def _call(self) -> None:
        if self.report is None:
            return
        try:
            self.report(self.done, self.total)
        except Exception as exc:  # noqa: BLE001 - a progress display must not fail the work
            log.warning("progress report failed (%s: %s); no more reports", type(exc).__name__, exc)
            self.report = None

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        self._call()

    def close(self) -> None:
        self.bar.close()


def progress_bar(progress: ProgressArg, total: int, desc: str, unit: str) -> Any:
    """A bar for ``total`` units: tqdm for ``True``, a disabled tqdm for ``False``, a bar that
    also calls ``progress(done, total)`` for a callable. Use ``update(n)`` and ``close()``."""
    from tqdm.auto import tqdm

    if callable(progress):
        return _CallbackBar(progress, total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress)
