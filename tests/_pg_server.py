"""A throw-away PostgreSQL server for tests (Debian's ``postgresql`` package; see DESIGN.md).

``postgres_server`` (session fixture) runs initdb in a temporary folder and starts the server
on 127.0.0.1 with a free port; it yields an SQLAlchemy URL and stops the server at the end. The
server refuses to run as root, so as root the folder is handed to the ``postgres`` user and the
binaries run through ``runuser``. Skips (with the reason) only when the binaries are absent.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest


def pg_bindir() -> str | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="sqflow-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres")
            os.chmod(self.dir, 0o755)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        r = self._run(
            f"{self.bindir}/initdb", "-D", self.data, "-A", "trust", "-U", "sqflow", "--no-sync"
        )
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stdout}\n{r.stderr}")
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        r = self._run(
            f"{self.bindir}/pg_ctl",
            "-D",
            self.data,
            "-o",
            opts,
            "-l",
            os.path.join(self.dir, "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        if r.returncode:
            log = (
                open(os.path.join(self.dir, "log")).read()
                if os.path.exists(os.path.join(self.dir, "log"))
                else ""
            )
            raise RuntimeError(f"pg_ctl start failed: {r.stdout}\n{r.stderr}\n{log}")

    def stop(self) -> None:
        self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://sqflow@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        """A fresh database (one per test keeps tests independent); returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries absent (/usr/lib/postgresql/*/bin/initdb); "
            "install Debian's 'postgresql' package (.ci/run does)"
        )
    srv = PgServer(bindir)
    t0 = time.perf_counter()
    srv.start()
    srv.startup_seconds = time.perf_counter() - t0
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def pg_url(postgres_server: PgServer) -> str:
    return postgres_server.create_database()
