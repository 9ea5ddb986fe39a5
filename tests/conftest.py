"""Test-wide settings: Prefect and Dask stay offline and write only to temporary folders."""

import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="sqflow-tests-")
os.environ.setdefault("PREFECT_HOME", os.path.join(_TMP, "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", os.path.join(_TMP, "dask"))
