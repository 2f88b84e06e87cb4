"""docs/metrics.md is generated from the code and current; every metric has help text and
a unit; no label could carry a payment id, a card or a merchant."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from switch.cli import catalogue
from switch.observability.metrics import SwitchMetrics

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "metrics.md"


def entries() -> list[catalogue.MetricEntry]:
    networks = catalogue.example_networks()
    return catalogue.collect_entries(SwitchMetrics(networks=networks), networks)


def test_docs_metrics_md_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "switch.cli.catalogue", "--check", str(DOC)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, (
        f"{result.stderr}\nregenerate: .venv/bin/python -m switch.cli.catalogue > docs/metrics.md"
    )


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "metrics.md"
    stale.write_text(catalogue.generate().replace("payswitch_ready", "payswitch_readyish"))
    assert catalogue.main(["--check", str(stale)]) == 1
    stale.write_text(catalogue.generate())
    assert catalogue.main(["--check", str(stale)]) == 0


def test_every_metric_is_in_the_catalogue() -> None:
    text = catalogue.generate()
    found = entries()
    assert len(found) >= 15
    for entry in found:
        assert f"| `{entry.name}` |" in text


def test_every_metric_has_help_a_unit_and_a_conventional_name() -> None:
    for entry in entries():
        assert entry.help.strip(), f"{entry.name}: no help text"
        assert entry.unit, f"{entry.name}: no unit"
        assert re.fullmatch(r"payswitch_[a-z][a-z0-9_]*", entry.name), entry.name
        if entry.type == "counter":
            assert entry.name.endswith("_total"), entry.name
        else:
            assert not entry.name.endswith("_total"), f"{entry.name}: only counters end in _total"
        assert not re.search(r"_(ms|milliseconds|us|microseconds|kb|mb)(_|$)", entry.name), (
            f"{entry.name}: use base units (seconds, bytes)"
        )


def test_no_label_could_identify_a_payment_card_or_merchant() -> None:
    for entry in entries():
        for label in entry.labels:
            assert not catalogue.FORBIDDEN_LABEL.search(label.name), (
                f"{entry.name}: label {label.name!r} is unbounded or sensitive"
            )
            # Bounded: a closed set bound at start-up, not one value per payment. The
            # largest is the ISO 4217 table the switch accepts (36 currencies).
            assert 0 < len(label.values) <= 40, (entry.name, label.name, label.values)


@pytest.mark.parametrize(
    "label", ["payment_id", "card", "pan", "card_number", "merchant", "merchant_id", "id"]
)
def test_forbidden_label_pattern_catches(label: str) -> None:
    assert catalogue.FORBIDDEN_LABEL.search(label)


@pytest.mark.parametrize("label", ["channel", "status", "reason", "network", "rule", "kind", "le"])
def test_forbidden_label_pattern_allows(label: str) -> None:
    assert not catalogue.FORBIDDEN_LABEL.search(label)


def test_units_come_from_the_name() -> None:
    assert catalogue.unit_for("payswitch_x_duration_seconds", "histogram") == "seconds"
    assert catalogue.unit_for("payswitch_x_records", "gauge") == "records"
    assert catalogue.unit_for("payswitch_things_total", "counter") == "count"
    assert catalogue.unit_for("payswitch_x_payments_total", "counter") == "payments"
    with pytest.raises(ValueError, match="no unit"):
        catalogue.unit_for("payswitch_mystery", "gauge")


def test_the_catalogue_documents_conventions_and_process_model() -> None:
    text = DOC.read_text()
    for heading in (
        "## Metrics",
        "## Conventions",
        "## SLIs and SLOs",
        "## Several switch processes",
        "**Decision: per-process ports",
    ):
        assert heading in text
