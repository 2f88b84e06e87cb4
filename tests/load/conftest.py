"""Fixtures for the load-harness tests: a live switch process, and Chromium.

Never import locust here or in any test module (it monkey-patches the process with
gevent): the Locust tests run it in subprocesses.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.harness.demo import DEMO_CONFIG
from loadtests.harness.processes import start_switch, stop_switch

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"


@pytest.fixture(scope="session")
def live_switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """``payswitch serve`` in its own process with the demo's config (risk rules on)."""
    work = tmp_path_factory.mktemp("load-switch")
    config = work / "switch.toml"
    config.write_text(DEMO_CONFIG.format(seed=3, journal=work / "journal.db", admin_port=0))
    proc, endpoints = start_switch(config, work / "ready.json")
    try:
        yield endpoints
    finally:
        stop_switch(proc)


def chromium_binary() -> str:
    """The Chromium to render reports with; a missing one fails the test, never skips."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "chromium is not installed: run `sh loadtests/install-chromium.sh` "
        "(Debian package `chromium`); the report-rendering test needs it"
    )


def screenshot(html: Path, png: Path, profile: Path) -> None:
    """Open ``html`` in headless Chromium and save a 1200×2000 screenshot."""
    command = [
        chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
        "--window-size=1200,2000", html.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and png.exists(), result.stderr[-2000:]
