"""Debian's Chromium for the dashboard's browser tests and screenshots (Playwright's own browser download
cannot be reached here): where it is, and the flags a closed network and a root user need."""

from __future__ import annotations

import os
import shutil

CHROMIUM = os.environ.get("INNKEEPER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# No background connections (they are refused, many at a time, on a closed network); no sandbox (root in CI).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_available() -> bool:
    return os.path.exists(CHROMIUM)
