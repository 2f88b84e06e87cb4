"""Structural checks of the Grafana dashboards (dashboards/grafana/*.json).

What must hold for a dashboard to work the first time it is imported: valid JSON, a
Prometheus datasource variable that every query uses, unique panel ids, no hard-coded
instance or host, only metric names the switch exports (or recording rules we ship), and
PromQL that parses -- checked by promtool, each expression as a recording rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channels.metrics import ChannelMetrics
from switch.cli.catalogue import example_networks
from switch.observability.metrics import SwitchMetrics
from tests.observability.test_promtool import RULE_FILES, run_promtool

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "dashboards" / "grafana"
DASHBOARDS = {p.stem: p for p in sorted(GRAFANA.glob("*.json"))}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

#: Grafana variables and what they stand for when an expression is checked or evaluated.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "5s",
    "$__range": "5m",
    "$instance": ".*",
    "$job": "payswitch",
    "$channels_job": "payswitch-channels",
}
#: A series name the expression refers to: the switch's (payswitch_*, payswitch:*), the
#: network simulators' (channels_*) or Prometheus's; not a Grafana variable ($channels_job).
NAME = re.compile(r"(?<!\$)\b(payswitch[_:][a-zA-Z0-9_:]*|channels_[a-zA-Z0-9_]+|up|ALERTS)\b")
#: The simulators' networks in examples/channels.toml (what the e2e test runs).
SIMULATOR_NETWORKS = ("card-primary", "card-secondary", "swift", "qr")
HOST = re.compile(r"localhost|127\.0\.0\.1|\b\d{1,3}(\.\d{1,3}){3}\b|:\d{2,5}\b")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARDS[name].read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def substitute(expr: str) -> str:
    # Longest names first: $__rate_interval before $__range, $instance before $i...
    for var in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(var, SUBSTITUTIONS[var])
    return expr


def dashboard_exprs(name: str) -> list[tuple[str, str]]:
    """(where, PromQL with Grafana variables substituted) for every target of a dashboard."""
    found = []
    for panel in all_panels(load(name)["panels"]):
        for target in panel.get("targets", []):
            found.append((f"{name}: {panel['title']} [{target['refId']}]", target["expr"]))
    return found


def variable_queries(name: str) -> list[tuple[str, str, str]]:
    """(variable, metric selector, label) for every ``label_values(...)`` variable."""
    out = []
    for var in load(name)["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"{name}: variable {var['name']}: unsupported query {query!r}"
        out.append((var["name"], match.group(1), match.group(2)))
    return out


#: The series names each metric type exposes (prometheus-client drops `_total` from a
#: counter family's name; `_created` is disabled).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every series name the switch and the simulators can export.

    From the metric families, not only the samples: a labelled metric whose children are
    created on the first event (payswitch_failovers_total, payswitch_breaker_transitions_total)
    has no sample until then.
    """
    registries = [
        SwitchMetrics(networks=example_networks()).registry,
        ChannelMetrics(SIMULATOR_NETWORKS).registry,
    ]
    names = set()
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
            names.update(sample.name for sample in family.samples)
    return names


def recording_rule_names() -> set[str]:
    names = set()
    for path in RULE_FILES:
        names.update(re.findall(r"^\s*-\s*record:\s*(\S+)", path.read_text(), re.M))
    return names


def test_the_four_dashboards_exist() -> None:
    assert {"overview", "channels", "loadtest", "slo"} <= set(DASHBOARDS)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    dash = load(name)
    assert dash["schemaVersion"] >= 39
    assert dash["uid"] and dash["title"]
    assert dash.get("id") is None, "provisioned dashboards must not carry a database id"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, f"variable {var['name']}"

    panels = list(all_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}: {ids}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] in ("row", "text"):
            continue
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what the panel shows"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, (panel["title"], target)
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_no_hard_coded_instance_or_host(name: str) -> None:
    for where, expr in dashboard_exprs(name):
        for match in re.finditer(r'\binstance\s*(=~|=|!=|!~)\s*"([^"]*)"', expr):
            assert match.group(2) == "$instance", f"{where}: hard-coded instance in {expr}"
        assert not HOST.search(expr), f"{where}: hard-coded host or port in {expr}"
    for var in load(name)["templating"]["list"]:
        assert not HOST.search(json.dumps(var.get("current", {}))), var["name"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_only_existing_metrics_and_rules(name: str) -> None:
    known = exported_names() | recording_rule_names() | {"up", "ALERTS"}
    for where, expr in dashboard_exprs(name):
        unknown = set(NAME.findall(expr)) - known
        assert not unknown, f"{where}: unknown series {sorted(unknown)} in {expr}"
    for var, selector, _label in variable_queries(name):
        unknown = set(NAME.findall(selector)) - known
        assert not unknown, f"variable {var}: unknown series {sorted(unknown)}"


def test_rules_use_only_existing_metrics() -> None:
    known = exported_names() | recording_rule_names()
    for path in RULE_FILES:
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )
        unknown = {n for n in NAME.findall(text) if n not in ("up", "ALERTS")} - known
        assert not unknown, f"{path.name}: unknown series {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_expression_parses(name: str, tmp_path: Path) -> None:
    exprs = dashboard_exprs(name)
    rules = [
        {"record": f"dashboard_check:expr_{i}", "expr": substitute(expr)}
        for i, (_where, expr) in enumerate(exprs)
    ]
    # JSON is YAML: promtool reads this as a rule file.
    path = tmp_path / f"{name}.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": name, "rules": rules}]}, indent=1))
    result = run_promtool("check", "rules", str(path))
    listing = "\n".join(f"expr_{i}: {where}: {expr}" for i, (where, expr) in enumerate(exprs))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{listing}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


def test_every_metric_is_on_a_dashboard() -> None:
    """A metric added to switch/observability/metrics.py (or the simulators') needs a panel too."""
    used: set[str] = set()
    for name in DASHBOARDS:
        for _where, expr in dashboard_exprs(name):
            used.update(NAME.findall(expr))
    registries = [
        SwitchMetrics(networks=example_networks()).registry,
        ChannelMetrics(SIMULATOR_NETWORKS).registry,
    ]
    missing = []
    for registry in registries:
        for family in registry.collect():
            series = {family.name} | {family.name + s for s in SUFFIXES.get(family.type, ())}
            if not series & used:
                missing.append(family.name)
    assert not missing, f"metrics on no dashboard panel: {sorted(missing)}"


def test_breaker_state_panels_name_the_states() -> None:
    """payswitch_breaker_state is 0/1/2: every panel showing it says closed/half-open/open."""
    found = 0
    for name in DASHBOARDS:
        for panel in all_panels(load(name)["panels"]):
            exprs = " ".join(t["expr"] for t in panel.get("targets", []))
            if "payswitch_breaker_state" not in exprs:
                continue
            found += 1
            texts = {}
            for mapping in panel["fieldConfig"]["defaults"].get("mappings", []):
                if mapping["type"] == "value":
                    texts.update({k: v["text"] for k, v in mapping["options"].items()})
            assert texts == {"0": "closed", "1": "half-open", "2": "open"}, panel["title"]
    assert found, "no panel shows the breaker state"
