"""How sqflow's Prefect tasks are built: each is ``task(<engine function>, name=..., **policy)``
over a plain function of :mod:`sqflow.pipeline` (or a few lines around one), with the retry
policies below; and the engine's log records reach the run's log.

The engine logs through the standard :mod:`logging` module (loggers ``sqflow.pipeline.*``); the
handler installed here sends those records to the Prefect run logger of the task (or flow) that
is running in this thread, so they show in the Prefect UI as before. Outside a run (a stage
called as a plain function) warnings and errors go to the root logger, as any library's would.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.tasks import exponential_backoff

__all__ = ["IO_RETRY", "ENGINE_LOGGER", "transient_io_error"]

#: the engine's stage loggers, forwarded to the Prefect run log
ENGINE_LOGGER = "sqflow.pipeline"


class _ToRunLog(logging.Handler):
    """Re-log a record on the current Prefect run logger (none: to the root logger's handlers,
    warnings and worse only)."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect import get_run_logger

        try:
            run_log = get_run_logger()
        except Exception:  # noqa: BLE001 - no run in this thread (plain call, Dask thread)
            if record.levelno >= logging.WARNING:
                logging.getLogger().handle(record)
            return
        run_log.log(record.levelno, record.getMessage(), exc_info=record.exc_info)


def _install_forwarding() -> None:
    engine = logging.getLogger(ENGINE_LOGGER)
    if not any(isinstance(h, _ToRunLog) for h in engine.handlers):
        engine.addHandler(_ToRunLog())
        engine.setLevel(logging.INFO)
        engine.propagate = False  # the handler decides where a record goes (no double lines)


_install_forwarding()


def transient_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient I/O errors (``OSError`` but not a
    missing file); contract and source errors fail at once with their message."""
    try:
        state.result()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    except BaseException:  # noqa: BLE001 - everything else is not transient
        return False
    return False


#: retry policy of the I/O stages: twice, exponential backoff, transient errors only
IO_RETRY: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_condition_fn": transient_io_error,
}
