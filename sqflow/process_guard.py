"""No orphan processes after a killed run: a small watcher process that ends the run's child
processes (the ephemeral Prefect API server, Dask worker processes, ...) when the run's process
dies without cleaning up (``kill -9``, the OOM killer), which ``atexit`` handlers cannot do.

:func:`start_process_guard` starts (once per process) ``python -m sqflow.process_guard <pid>``
in its own session, holding the read end of a pipe whose write end only the guarded process
holds. While the guarded process lives, the watcher records its descendants (pid and start time
from ``/proc``, every ``poll_s`` seconds). When the pipe reads end-of-file (the guarded process
is gone, however it died), the watcher sends SIGTERM to every recorded descendant that still
runs (same pid AND same start time: never a recycled pid), waits up to 5 s, sends SIGKILL to the
rest and exits. When the guarded process exits normally its children are already gone and the
watcher just exits. Linux only (``/proc``); elsewhere :func:`start_process_guard` does nothing.

The guarded process hands over the children it has when it starts the guard (written into the
pipe, so nothing is lost if it dies a moment later); later children are found by polling. A
child started less than ``poll_s`` before the guarded process died is not yet recorded (the
only gap).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["descendants", "start_process_guard"]

_guard: subprocess.Popen | None = None


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid`` from /proc, None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ... starttime
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """Every living descendant of ``pid``: pid -> start time (clock ticks since boot)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None:
            children.setdefault(st[0], []).append(int(entry))
            starts[int(entry)] = st[1]
    out: dict[int, int] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out[p] = starts[p]
        todo.extend(children.get(p, []))
    return out


def start_process_guard(poll_s: float = 1.0) -> int | None:
    """Start the watcher of this process (once; later calls only hand it the current children).
    Returns the watcher's pid, or None where ``/proc`` does not exist.

    The descendants this process has now (e.g. the ephemeral Prefect server started before the
    flow body runs) are written into the pipe before this returns, so they are ended even if
    this process is killed before the watcher has polled once."""
    global _guard
    if not Path("/proc/self/stat").exists():
        return None
    if _guard is None or _guard.poll() is not None:
        _guard = subprocess.Popen(
            [sys.executable, "-m", "sqflow.process_guard", str(os.getpid()), str(poll_s)],
            stdin=subprocess.PIPE,  # our end stays open until this process is gone
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to our process group does not reach the watcher
            close_fds=True,
        )
    known = {p: t for p, t in descendants(os.getpid()).items() if p != _guard.pid}
    if known:
        _guard.stdin.write("".join(f"{p} {t}\n" for p, t in known.items()).encode())
        _guard.stdin.flush()
    return _guard.pid


def _watch(pid: int, poll_s: float) -> None:
    me = os.getpid()
    seen: dict[int, int] = {}
    fd = sys.stdin.fileno()
    buf = b""
    while True:
        ready, _, _ = select.select([fd], [], [], poll_s)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                break  # end of file: the guarded process is gone
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:  # children the guarded process handed over
                p, t = line.split()
                seen[int(p)] = int(t)
        seen.update({p: t for p, t in descendants(pid).items() if p != me})
    left = {p: t for p, t in seen.items() if (st := _stat(p)) is not None and st[1] == t}
    for p in left:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(
        (st := _stat(p)) is not None and st[1] == t for p, t in left.items()
    ):
        time.sleep(0.1)
    for p, t in left.items():
        st = _stat(p)
        if st is not None and st[1] == t:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    _watch(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
