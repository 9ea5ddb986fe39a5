"""Progress artifacts: a long stage's loop shows how far it got on its task run page.

:func:`progress_reporter` makes a Prefect progress artifact (``create_progress_artifact``) and
returns the plain callable ``report(done, total)`` that engine functions accept as their
``progress`` argument (:mod:`sqflow.progress`; they also keep their terminal bar). Updates are
sent when the percentage moved by at least ``step`` points (or the loop finished), so a loop of
thousands of chunks does not make thousands of API calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact

__all__ = ["progress_reporter"]


def progress_reporter(description: str, step: float = 1.0) -> Callable[[int, int], Any]:
    """A new progress artifact at 0 % (``description``: what is counted, e.g. "embed: chunks
    written") and its ``report(done, total)`` callable (percent = 100 * done / total; a total
    of 0 counts as finished)."""
    artifact_id = create_progress_artifact(0.0, description=description)
    last = [0.0]

    def report(done: int, total: int) -> None:
        pct = 100.0 if total <= 0 else min(100.0, 100.0 * done / total)
        if pct - last[0] >= step or (pct >= 100.0 and last[0] < 100.0):
            update_progress_artifact(
                artifact_id, pct, description=f"{description} ({done}/{total})"
            )
            last[0] = pct

    return report
