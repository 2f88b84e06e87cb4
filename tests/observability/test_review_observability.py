"""Review: the metric catalogue and the alert rules say what is true.

Each test here failed before its fix.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from loadtests.harness.genmetrics import METRIC_NAMES
from switch.cli.catalogue import generate
from switch.observability.logs import JsonFormatter, mask_pans

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "dashboards" / "prometheus"


def test_catalogue_lists_no_exported_loadgen_metric_as_planned() -> None:
    """docs/metrics.md said payswitch_loadgen_offered/sent_requests_total were "not
    exported yet" while `payswitch load --metrics-port` exports them."""
    text = generate()
    planned = text.split("## Planned", 1)[1] if "## Planned" in text else ""
    wrongly_planned = [name for name in METRIC_NAMES if f"`{name}`" in planned]
    assert wrongly_planned == []
    for name in METRIC_NAMES:
        assert f"`{name}`" in text, f"{name} is exported by the load generator: list it"


def test_quarantine_alert_fires_for_records_quarantined_before_the_first_scrape() -> None:
    """A record is quarantined at start-up (before the admin port is bound, so before any
    scrape): the counter's series starts at 1, and ``increase()`` over a series' first
    sample is 0, so the old ``increase(...[15m]) > 0`` never paged; nor after a restart
    (1 -> 1). dashboards/prometheus/tests/quarantine_test.yml holds the cases."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is required (Debian package prometheus)")
    proc = subprocess.run([promtool, "test", "rules", "tests/quarantine_test.yml"],
                          cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("text", "pan"), [
    # A grouped PAN followed by its expiry or an amount: the whole run fails Luhn, and
    # each 4-digit group alone is too short, so nothing was masked.
    ("pan 5555 5555 5555 4444 2512", "5555555555554444"),
    ("charging 4111 1111 1111 1111 100 USD", "4111111111111111"),
    ("card 4111-1111-1111-1111-0", "4111111111111111"),
    ("two: 4111 1111 1111 1111 5555 5555 5555 4444", "5555555555554444"),
    ("amount 12 4012 8888 8888 1881", "4012888888881881"),
])
def test_grouped_pan_next_to_another_number_is_masked(text: str, pan: str) -> None:
    masked = mask_pans(text)
    assert pan not in re.sub(r"[ -]", "", masked), masked
    assert pan[-4:] in masked and "******" in masked
    record = logging.LogRecord("switch", logging.INFO, __file__, 1, "%s", (text,), None)
    line = JsonFormatter().format(record)
    assert pan not in re.sub(r"[ -]", "", json.loads(line)["msg"]), line
