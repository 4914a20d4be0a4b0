"""Debian's Chromium for the browser tests: installed when missing (as root, with apt, as
on a fresh CI machine), started headless with the flags this machine needs (no
sandbox as root, no background networking: the network is closed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("CRS_TEST_ARTIFACTS", "test-artifacts")) / "pictures"


def chromium() -> Path | None:
    """The Chromium binary, installed with apt-get if missing and we are root; None when
    it cannot be had (not root, no apt)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
        check=True,
        env=env,
    )
    return CHROMIUM if CHROMIUM.exists() else None
