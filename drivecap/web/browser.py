"""Headless Chromium (Debian's ``chromium`` package) driven by Playwright, for the benchmark and the tests.

Playwright's own browser download is not reachable on these machines: Playwright is pointed at the system
browser through ``executable_path``.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from drivecap.errors import DrivecapError

ARGS = [
    "--no-sandbox",  # runs as root in CI containers, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


def chromium_path() -> str:
    """The Chromium binary: $DRIVECAP_CHROMIUM, else /usr/bin/chromium, else one on PATH."""
    for cand in (os.environ.get("DRIVECAP_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise DrivecapError("Chromium is not installed: `apt-get install chromium` (scripts/setup.sh does)")


def launch(playwright: Any) -> Any:
    """A headless Chromium browser from a started ``sync_playwright()``."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=ARGS)
