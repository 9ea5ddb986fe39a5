"""Named points where a test or the fault-injection benchmark can make the process kill itself
(``SIGKILL``, the same as ``kill -9`` from outside: no ``finally``, no ``atexit``).

Set ``SQFLOW_KILL_AT=<point>`` (or ``<point>@<n>``: the n-th time the point is reached, 1 by
default) in the environment of a nightly process; :func:`kill_point` does nothing when the
variable is unset or names another point, so production code pays one dictionary look-up.

Points (in the order a nightly reaches them): ``start`` (run.json "running" written),
``after-sample``, ``embed-chunk@n`` (before embedding chunk n: chunks < n are committed),
``after-embed``, ``after-monitor``, ``cluster-pass@n`` (after SQ pass n was checkpointed),
``after-cluster``, ``after-report``, ``publish-parquet-data`` (the run's Parquet data files
written, its ``runs`` file not yet), ``publish-parquet`` (Parquet committed, DuckDB not yet),
``publish-duckdb`` (DuckDB committed, PostgreSQL not yet), ``after-publish`` (every sink
written, run.json not yet "completed").

The retrain (in a nightly after ``after-publish``, or the stand-alone ``retrain`` flow) reaches:
``register-tmp`` (the new version's folder written aside as ``.triplet-vNNNN.<pid>.tmp``, not
renamed), ``register-renamed`` (the version registered, not current; a retrain then embeds its
reference), ``set-current`` (``models/CURRENT`` written: a promoted version, its lineage line
not yet), ``reembed-swap`` (the night's store moved aside, the store re-embedded with the
new version not yet renamed in: the run has no live store), ``after-retrain`` (the lineage
line written, the ``retrains`` BI rows not published),
then the ``retrains`` publish through ``publish-parquet`` / ``publish-duckdb`` (``@2`` in a
nightly, whose own publish reached them first) and ``after-retrain-publish``. ``register-*``
and ``set-current`` are also reached by ``train-encoder``.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["ENV_KILL_AT", "kill_point"]

ENV_KILL_AT = "SQFLOW_KILL_AT"

_reached: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """SIGKILL this process if ``SQFLOW_KILL_AT`` names ``name`` (and this is the n-th time
    ``name`` is reached, for ``name@n``)."""
    want = os.environ.get(ENV_KILL_AT)
    if not want:
        return
    point, _, nth = want.partition("@")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
