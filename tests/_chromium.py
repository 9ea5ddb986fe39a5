"""Headless Debian Chromium for the tests that render pages (the Prefect UI, the cluster
report): the flags that work offline on this machine (DESIGN.md), in one place."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_command(tmp: Path, *args: str) -> list[str]:
    """The command line: headless, no network side traffic, a fresh profile under ``tmp``."""
    if CHROMIUM is None:
        raise RuntimeError("chromium is not installed (apt-get install -y chromium)")
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chrome-profile'}",
        "--virtual-time-budget=20000",
        *args,
    ]
