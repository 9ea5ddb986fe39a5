"""Test-wide settings and shared fixtures.

Prefect and Dask stay offline and write only to temporary folders. Shared fixtures:

* ``prefect_harness`` (session): one real Prefect test server (``prefect_test_harness``) for
  every test that runs flows (about 13 s to start; a generous timeout for a loaded machine);
* ``postgres_server`` (session) and ``pg_url`` (a fresh database per test): a real PostgreSQL
  server started from the system's binaries (:mod:`tests._pg_server`; skipped when absent).
"""

import os
import tempfile

import pytest

_TMP = tempfile.mkdtemp(prefix="sqflow-tests-")
os.environ.setdefault("PREFECT_HOME", os.path.join(_TMP, "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", os.path.join(_TMP, "dask"))

from tests._pg_server import pg_url, postgres_server  # noqa: E402 - after the environment

__all__ = ["pg_url", "postgres_server", "prefect_harness"]


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
