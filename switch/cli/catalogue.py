"""The metric catalogue (docs/metrics.md), generated from the code so it cannot drift.

It instantiates :class:`switch.observability.metrics.SwitchMetrics` with the default configuration's
network names, walks the registry, and renders each metric's exposed name, type, unit,
labels (with their bounded value sets) and help text as Markdown, followed by the
conventions the names follow, how several switch processes are monitored, the recording
rules and alerts shipped under dashboards/prometheus/rules, and the metrics still planned.

    python -m switch.cli.catalogue > docs/metrics.md          # regenerate
    python -m switch.cli.catalogue --check docs/metrics.md    # exit 1 if the file is stale

A new metric slots in by being defined in switch/observability/metrics.py: its unit is
derived from its name's suffix (``_seconds``, ``_records``, ``_payments`` ...; a
counter without one counts events). A name from which no unit can be derived is an
error here, so the catalogue (and its test) fail until the name follows the convention
or :data:`UNIT_OVERRIDES` explains it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from switch.observability.metrics import SwitchMetrics
from switch.routing.breaker import BreakerState
from switch.serve.config import SwitchConfig, with_defaults

#: Name suffix (last ``_`` word, after ``_total`` is removed) → unit.
UNIT_SUFFIXES: Final[dict[str, str]] = {
    "seconds": "seconds",
    "bytes": "bytes",
    "records": "records",
    "payments": "payments",
    "requests": "requests",
    "connections": "connections",
    "ratio": "ratio (0–1)",
    "messages": "messages",
}
#: Metrics whose unit cannot be read from the name, with the reason in the unit itself.
UNIT_OVERRIDES: Final[dict[str, str]] = {
    "payswitch_ready": "boolean (1 = ready, 0 = not)",
    "payswitch_breaker_state": "state (0 closed, 1 half-open, 2 open)",
    "payswitch_retry_budget_remaining": "retries",
}
#: Label names that would mean an unbounded (or sensitive) label: never allowed.
FORBIDDEN_LABEL = re.compile(
    r"(^|_)(payment|card|pan|merchant|account|customer|key|rrn|stan|uetr|terminal)(_|$)|_id$|^id$"
)

#: Issue 6 asks for these; they slot in when the routing and load work exports them. Each
#: line disappears from the generated catalogue once a metric of that name exists.
_PLANNED_TABLE: Final = """
payswitch_approved_amount_minor_total | counter | approved amount per currency, in minor units
payswitch_declines_total | counter | declines by channel and reason code (bounded DE39 set)
payswitch_sli_good_payments_total | counter | availability SLI: good events, counted once at reply
payswitch_sli_payments_total | counter | availability SLI: all events, counted once at reply
payswitch_loadgen_offered_requests_total | counter | load generator: requests due by schedule
payswitch_loadgen_sent_requests_total | counter | load generator: requests actually sent
payswitch_loadgen_lag_seconds | histogram | load generator: lag behind its schedule
"""


def _parse_planned(table: str) -> tuple[tuple[str, str, str], ...]:
    rows = []
    for line in table.strip().splitlines():
        name, kind, meaning = (part.strip() for part in line.split("|"))
        rows.append((name, kind, meaning))
    return tuple(rows)


PLANNED: Final = _parse_planned(_PLANNED_TABLE)

#: Measured by bench/bench_metrics_modes.py (its section of bench/RESULTS.md has the full
#: table). Re-run it on a new machine class and update these figures.
MEASURED_ON: Final = "AMD EPYC, 2 cores, Python 3.11.7, prometheus-client 0.26"
MEASURED_MODES: Final[tuple[tuple[str, float, float], ...]] = (
    # (operation, default µs, multiprocess µs), best of 7 repeats
    ("Counter.inc() (bound child)", 0.31, 0.87),
    ("Histogram.observe() (15 buckets)", 0.72, 1.89),
    ("Gauge.set()", 0.30, 0.85),
    ("labels(...).inc() (unbound: never on the hot path)", 1.18, 1.81),
)
MEASURED_SCRAPE: Final = (
    "rendering one process's whole registry took 1.3 ms; merging 4 processes' mmap files "
    "in multiprocess mode took 2.8 ms, in one process, and grows with every process (and "
    "every restarted process whose files were not removed)"
)
#: Metric calls per payment on the hot path at low load: payments inc, payment and
#: network duration observe, in-flight set twice; the journal adds per commit (two
#: commits per payment when batches hold one record) two observes and a set.
CALLS_PER_PAYMENT: Final = {"inc": 1, "observe": 2 + 4, "set": 2 + 2}

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
RULES_DIR: Final = REPO_ROOT / "dashboards" / "prometheus" / "rules"


@dataclass
class LabelInfo:
    name: str
    values: list[str]
    from_config: bool = False


@dataclass
class MetricEntry:
    name: str  # as exposed (counters carry _total)
    family: str  # as defined
    type: str
    help: str
    unit: str
    labels: list[LabelInfo] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)


def example_networks() -> list[str]:
    """The network names of the default configuration (one stand-in per channel)."""
    return [n.name for n in with_defaults(SwitchConfig()).networks]


def unit_for(name: str, kind: str) -> str:
    """Derive a metric's unit from its name; ``ValueError`` if the name does not say."""
    if name in UNIT_OVERRIDES:
        return UNIT_OVERRIDES[name]
    base = name.removesuffix("_total")
    suffix = base.rsplit("_", 1)[-1]
    if suffix in UNIT_SUFFIXES:
        return UNIT_SUFFIXES[suffix]
    if kind == "counter":
        return "count"
    raise ValueError(
        f"{name}: no unit can be derived from the name; end it with a unit "
        f"({', '.join(sorted(UNIT_SUFFIXES))}) or add it to UNIT_OVERRIDES"
    )


def _known_values(label: str, networks: Sequence[str]) -> Sequence[str]:
    """The closed value set of a label whose series appear only with their first event."""
    if label in ("endpoint", "from_endpoint", "to_endpoint"):
        return networks
    if label in ("from_state", "to_state"):
        return [state.value for state in BreakerState]
    return ()


def collect_entries(metrics: SwitchMetrics, networks: Sequence[str]) -> list[MetricEntry]:
    entries: list[MetricEntry] = []
    # A labelled counter has no samples until its first event (failovers, transitions):
    # read the declared label names from the collectors as well.
    declared: dict[str, tuple[str, ...]] = {}
    for collector, names in metrics.registry._collector_to_names.items():
        for name in names:
            declared[name] = tuple(getattr(collector, "_labelnames", ()))
    for family in metrics.registry.collect():
        exposed = f"{family.name}_total" if family.type == "counter" else family.name
        labels: dict[str, list[str]] = {}
        buckets: list[str] = []
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            for key, value in sample.labels.items():
                if key == "le":
                    if value not in buckets:
                        buckets.append(value)
                    continue
                seen = labels.setdefault(key, [])
                if value not in seen:
                    seen.append(value)
        for key in declared.get(family.name, declared.get(exposed, ())):
            if not labels.get(key):
                labels[key] = list(_known_values(key, networks))
        label_infos = [
            LabelInfo(key, values, from_config=bool(values) and set(values) <= set(networks))
            for key, values in labels.items()
        ]
        entries.append(
            MetricEntry(
                name=exposed,
                family=family.name,
                type=family.type,
                help=family.documentation,
                unit=unit_for(exposed, family.type),
                labels=label_infos,
                buckets=buckets,
            )
        )
    return entries


def _rule_names(kind: str) -> list[tuple[str, str]]:
    """(name, file) for each ``- record:`` or ``- alert:`` in the shipped rule files."""
    found: list[tuple[str, str]] = []
    if not RULES_DIR.is_dir():
        return found
    pattern = re.compile(rf"^\s*-\s*{kind}:\s*(\S+)\s*$")
    for path in sorted(RULES_DIR.glob("*.yml")):
        for line in path.read_text().splitlines():
            match = pattern.match(line)
            if match and (match.group(1), path.name) not in found:
                found.append((match.group(1), path.name))
    return found


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _labels_cell(entry: MetricEntry) -> str:
    if not entry.labels:
        return "—"
    parts = []
    for label in entry.labels:
        if label.from_config:
            values = f"network names from config, e.g. {', '.join(label.values)}"
        else:
            values = ", ".join(label.values)
        parts.append(f"`{label.name}` ({values})")
    return "<br>".join(parts)


def _modes_section() -> list[str]:
    calls = CALLS_PER_PAYMENT
    by_op = {op.split(" ")[0]: (d, m) for op, d, m in MEASURED_MODES}
    default_cost = (
        calls["inc"] * by_op["Counter.inc()"][0]
        + calls["observe"] * by_op["Histogram.observe()"][0]
        + calls["set"] * by_op["Gauge.set()"][0]
    )
    multi_cost = (
        calls["inc"] * by_op["Counter.inc()"][1]
        + calls["observe"] * by_op["Histogram.observe()"][1]
        + calls["set"] * by_op["Gauge.set()"][1]
    )
    lines = [
        "## Several switch processes: one admin port per process",
        "",
        "A switch that outgrows one core runs as several processes. prometheus-client offers",
        "two ways to monitor them: give each process its own `/metrics` port and let",
        "Prometheus scrape each one (aggregating in PromQL), or *multiprocess mode*",
        "(`PROMETHEUS_MULTIPROC_DIR`), where every value lives in a per-process mmap file and",
        "one endpoint merges the files at scrape time. Measured with",
        f"`bench/bench_metrics_modes.py` ({MEASURED_ON}; best of 7, µs per call):",
        "",
        "| Call | default | multiprocess | ratio |",
        "|---|---|---|---|",
    ]
    for op, default, multi in MEASURED_MODES:
        lines.append(f"| {op} | {default:.2f} | {multi:.2f} | {multi / default:.1f}× |")
    lines += [
        "",
        f"Scrape cost: {MEASURED_SCRAPE}.",
        "",
        f"Per payment the hot path makes about {sum(calls.values())} metric calls at low load"
        f" ({calls['inc']} inc, {calls['observe']} observe, {calls['set']} set, counting the"
        " journal's per-commit calls with one record per commit): about"
        f" {default_cost:.1f} µs in default mode and {multi_cost:.1f} µs in multiprocess mode.",
        "",
        "**Decision: per-process ports, scraped separately; multiprocess mode is not used.**",
        "",
        "- Multiprocess mode costs about 2.6–2.9× per call on the hot path, for nothing the",
        "  switch needs: every process already has its own admin server.",
        "- It cannot carry exemplars (the payment id on a slow latency bucket), cannot use",
        "  `Gauge.set_function`, and needs a merge mode chosen per gauge; `payswitch_ready` and",
        "  `payswitch_in_flight_payments` are only meaningful per process anyway.",
        "- Its directory must be wiped at start and dead processes' files cleaned up, or the",
        "  merged counters and the scrape cost drift with every restart.",
        "- Per-process targets give Prometheus one `up` series per process, so a dead or",
        "  stuck process is visible by itself instead of being averaged away.",
        "",
        "How: give each process its own `[admin] port` (7180, 7181, ...) and list every port",
        "as a target of the `payswitch` job (dashboards/prometheus/prometheus.yml shows a",
        "static list and a file-based discovery alternative). Every recording rule, alert",
        "and dashboard panel aggregates with `sum by (job)` or over `instance`, so adding a",
        "process needs no change to them.",
        "",
    ]
    return lines


CONVENTIONS: Final = """\
## Conventions

- **Base units.** Durations are in seconds (`_seconds`), sizes in bytes or records, never
  milliseconds or kilobytes; a ratio is 0–1. The unit is the last word of the name
  (before `_total`), and this catalogue derives it from there.
- **Counters end in `_total`** in the exposition (prometheus-client adds the suffix; the
  definition in switch/observability/metrics.py omits it). Each counter and histogram also exposes a
  `_created` sample with its creation time. Histograms expose `_bucket{le=...}`, `_sum`
  and `_count`.
- **Bounded label sets.** Every label value comes from a closed set fixed at start-up:
  channels, final statuses, rejection reasons, risk rules, frame error kinds, and the
  network names in the configuration. Children are bound once in `SwitchMetrics`, so every
  series exists (at 0) from the first scrape and rates never start from a missing series.
  {series}
- **No payment ids, cards (PAN), accounts, merchants or idempotency keys as labels**, ever:
  each would create a series per payment (and leak card data). A slow payment is found
  through its exemplar and the journal, not through a label. The catalogue test fails on
  a label whose name looks like one of these.
- **`promtool check metrics` reports nothing** on a live `/metrics`
  (tests/observability/test_promtool.py checks it).
- **One registry per `SwitchMetrics`**, so several switches and simulators can share a
  test process. `/metrics` serves the OpenMetrics format when the scraper asks for it
  (`Accept: application/openmetrics-text`), the classic text format otherwise.
"""

SLI_NOTES: Final = """\
## SLIs and SLOs (dashboards/prometheus/rules)

- **Availability SLI.** Good events: payments answered `approved` or `declined` (a decline
  is a correct business outcome, not a switch failure). Bad events: payments answered
  `failed` or `unknown`, and requests rejected with `unavailable` (journal failure,
  fail-stop) or `overloaded` (admission control shed them). Other rejections (malformed,
  invalid, idempotency conflict, unknown op, frame too large) are the client's errors, and
  `shutting_down` is an orderly drain; none counts for or against the switch. `reversed`
  is left out: it is counted when the resolver reverses a payment already counted as
  `unknown`.
- **Availability objective: 99.95 %** by default, defined once, as the recording rule
  `payswitch:slo_objective:availability` in dashboards/prometheus/rules/recording.yml.
  Change the number there; every burn rate, alert and the SLO dashboard follow.
- **Latency SLI.** The fraction of accepted payments answered within 250 ms (the
  `le="0.25"` bucket of `payswitch_payment_duration_seconds`); objective 99 %
  (`payswitch:slo_objective:latency`). The threshold must be a bucket boundary: changing
  it means changing the `le` matcher in the latency rules as well.
- **Burn rate** = error ratio over a window / (1 − objective). Alerts follow the SRE
  workbook's multi-window, multi-burn-rate pattern: page when the 1 h and 5 m burn rates
  both exceed 14.4, or the 6 h and 30 m both exceed 6; open a ticket when 1 d and 2 h
  exceed 3, or 3 d and 6 h exceed 1.
- **Each payment is counted once** in `payswitch_payments_total`, when its reply is
  ready; a payment answered `unknown` counts as unknown (a bad event for the SLI). When
  the resolver later settles it, that is counted in `payswitch_resolved_payments_total`,
  not again in `payswitch_payments_total`.
- **Exemplars.** In the OpenMetrics exposition (`Accept: application/openmetrics-text`),
  payments slower than 10 ms carry their `payment_id` as an exemplar on
  `payswitch_payment_duration_seconds`, so a slow bucket leads to a payment and its
  journal records. Faster payments carry none, which keeps the hot path cheap.
"""


def series_count(networks: Sequence[str]) -> int:
    """Samples one scrape of a switch with these networks exposes (each is a series)."""
    return sum(len(f.samples) for f in SwitchMetrics(networks=networks).registry.collect())


def _series_sentence(networks: Sequence[str]) -> str:
    total = series_count(networks)
    per_network = series_count([*networks, "extra"]) - total
    return (
        f"With the default configuration ({len(networks)} networks) one process exposes "
        f"{total} series, plus {per_network} for each further network."
    )


def loadgen_metric_names() -> tuple[str, ...]:
    """The metrics ``payswitch load --metrics-port`` exports (exposed names)."""
    from loadtests.harness.genmetrics import METRIC_NAMES

    return tuple(METRIC_NAMES)


def _collapse_windows(names: Iterable[str]) -> list[str]:
    """``x:rate5m``, ``x:rate1h`` ... → ``x:rate<window>`` (window: 5m, 1h, ...)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        match = re.fullmatch(r"(.*?)(\d+[smhdw])", name)
        if match and not name.endswith("_30d"):
            groups.setdefault(f"{match.group(1)}<window>", []).append(match.group(2))
        else:
            groups.setdefault(name, [])
    lines = []
    for name, windows in groups.items():
        if len(windows) > 1:
            lines.append(f"- `{name}`, window: {', '.join(windows)}")
        elif windows:
            lines.append(f"- `{name.replace('<window>', windows[0])}`")
        else:
            lines.append(f"- `{name}`")
    return lines


def render(entries: Iterable[MetricEntry], networks: Sequence[str] = ()) -> str:
    entries = list(entries)
    out = [
        "# payswitch metric catalogue",
        "",
        "<!-- Generated by `python -m switch.cli.catalogue > docs/metrics.md`; "
        "do not edit by hand.",
        "     `python -m switch.cli.catalogue --check docs/metrics.md` fails when it is stale. -->",
        "",
        "Every metric the switch exports on its admin port (`/metrics`, default port 7180),",
        "generated from switch/observability/metrics.py. Network-labelled series exist for "
        "each network in the configuration; the examples below use the default "
        "configuration's networks.",
        "",
        "## Metrics",
        "",
        "| Name | Type | Unit | Labels | Meaning |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        out.append(
            f"| `{e.name}` | {e.type} | {e.unit} | {_labels_cell(e)} | {_md_escape(e.help)} |"
        )
    histograms = [e for e in entries if e.buckets]
    if histograms:
        out += ["", "### Histogram buckets (upper bounds, `le`)", ""]
        for e in histograms:
            bounds = ", ".join(b for b in e.buckets if b != "+Inf")
            out.append(f"- `{e.name}`: {bounds}, +Inf")
    out += ["", CONVENTIONS.replace("{series}", _series_sentence(networks)), SLI_NOTES]
    out += _modes_section()
    records, alerts = _rule_names("record"), _rule_names("alert")
    if records or alerts:
        out += ["## Recording rules and alerts", ""]
        if records:
            out.append(
                "Recording rules (dashboards/prometheus/rules/recording.yml; naming"
                " `level:metric:operation`, the file header explains each family):"
            )
            out.append("")
            out += _collapse_windows(name for name, _file in records)
            out.append("")
        if alerts:
            out.append("Alerts (dashboards/prometheus/rules/alerts.yml):")
            out.append("")
            out += [f"- `{name}`" for name, _file in alerts]
            out.append("")
    loadgen = loadgen_metric_names()
    if loadgen:
        out += [
            "## Load generator",
            "",
            "`payswitch load --metrics-port PORT` serves the generator's own metrics (the "
            "client's side of the wire; their meanings are in loadtests/harness/genmetrics.py):",
            "",
        ]
        out += [f"- `{name}`" for name in loadgen]
        out.append("")
    present = {e.name for e in entries} | {e.family for e in entries} | set(loadgen)
    planned = [p for p in PLANNED if p[0] not in present]
    if planned:
        out += [
            "## Planned",
            "",
            "Asked for by issue 6 and not exported yet; they arrive with the routing and load",
            "work. Names are proposals; each row disappears here once the metric exists.",
            "",
            "| Name | Type | Meaning |",
            "|---|---|---|",
        ]
        out += [f"| `{name}` | {kind} | {meaning} |" for name, kind, meaning in planned]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def generate() -> str:
    networks = example_networks()
    return render(collect_entries(SwitchMetrics(networks=networks), networks), networks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m switch.cli.catalogue", description="Generate docs/metrics.md from the code."
    )
    parser.add_argument(
        "--check", metavar="PATH", help="exit 1 if PATH differs from what would be generated"
    )
    args = parser.parse_args(argv)
    text = generate()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    path = Path(args.check)
    current = path.read_text() if path.exists() else ""
    if current != text:
        sys.stderr.write(
            f"{path} is stale: regenerate it with `python -m switch.cli.catalogue > {path}`\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
