"""End to end against a real Prometheus: every PromQL expression we ship must work on the
data a live switch exports.

1. Start the switch (a real `payswitch serve` process) on loopback.
2. Start Debian's /usr/bin/prometheus on a free loopback port, scraping the switch's admin
   port every second and loading dashboards/prometheus/rules/*.yml.
3. Drive a short open-loop load, wait for a few scrapes and rule evaluations.
4. Through the HTTP API: every rule is healthy; every recording rule and every dashboard
   query (Grafana variables substituted) parses and returns data; every alert expression
   parses, and every series it reads exists (an alert on a misspelt metric would otherwise
   stay silent forever). Alerts may return nothing: each one is listed below with why.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.observability.test_dashboards import (
    DASHBOARDS,
    NAME,
    dashboard_exprs,
    substitute,
    variable_queries,
)
from tests.observability.test_promtool import RULE_FILES, drive_load, require_binary, switch_process

#: Alerts fire only when something is wrong; on a healthy run their expression is empty.
#: Every alert must be listed, with the reason it may be empty.
ALERTS_MAY_BE_EMPTY = {
    "PayswitchAvailabilityBudgetBurn": "fires only while failures burn the availability budget "
    "(the stand-in networks' seeded failure rate may or may not trip it in a short run)",
    "PayswitchLatencyBudgetBurn": "fires only while over 1% of payments take more than 250 ms",
    "PayswitchUnresolvedPaymentsStuck": "needs a network that stops answering status checks",
    "PayswitchJournalCommitSlow": "needs a slow disk: journal commit p99 over 50 ms",
    "PayswitchJournalBacklogGrowing": "needs a journal writer that cannot keep up",
    "PayswitchNoTraffic": "the test sends traffic",
    "PayswitchNotReady": "the switch is ready throughout the test",
    "PayswitchTargetDown": "the switch is up throughout the test",
}
#: Dashboard queries allowed to return nothing, with the reason (none today: panels use
#: `or vector(0)` where a series can legitimately be absent, e.g. ALERTS).
DASHBOARD_MAY_BE_EMPTY: dict[str, str] = {}

PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
{rule_files}
scrape_configs:
  - job_name: payswitch
    static_configs:
      - targets: ["127.0.0.1:{admin_port}"]
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def query(api: httpx.Client, promql: str) -> list[dict[str, Any]]:
    response = api.get("/api/v1/query", params={"query": promql})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (
        f"{promql}\n-> {body.get('errorType')}: {body.get('error')}"
    )
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_until(what: str, check: Any, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode} while waiting for {what}")
        try:
            if check():
                return
        except (httpx.HTTPError, AssertionError, KeyError) as exc:
            last = exc
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what} (last error: {last})")


def all_rules(api: httpx.Client) -> list[dict[str, Any]]:
    groups = api.get("/api/v1/rules").json()["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_dashboard_and_rule_expression_against_real_prometheus(tmp_path: Path) -> None:
    prometheus = require_binary("prometheus")
    (tmp_path / "switch").mkdir()
    with switch_process(tmp_path / "switch") as endpoints:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            PROMETHEUS_CONFIG.format(
                rule_files="\n".join(f'  - "{path}"' for path in RULE_FILES),
                admin_port=endpoints["admin_port"],
            )
        )
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
                wait_until(
                    "prometheus ready",
                    lambda: api.get("/-/ready").status_code == 200,
                    20,
                    proc,
                )
                stats = drive_load(endpoints["port"], rate=150, duration_s=6)
                assert stats.replies > 500
                wait_until(
                    "three scrapes of the switch",
                    lambda: (
                        float(query(api, 'count_over_time(up{job="payswitch"}[1m])')[0]["value"][1])
                        >= 3
                    ),
                    20,
                    proc,
                )
                wait_until(
                    "every rule evaluated",
                    lambda: (
                        all(r["health"] == "ok" for r in all_rules(api))
                        and bool(query(api, "payswitch:sli_latency:error_budget_remaining_30d"))
                    ),
                    20,
                    proc,
                )
                _check_rules(api)
                _check_dashboards(api)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _check_series_exist(api: httpx.Client, where: str, expr: str, seen: dict[str, bool]) -> None:
    for name in set(NAME.findall(expr)) - {"ALERTS"}:
        if name not in seen:
            seen[name] = bool(query(api, f"count({name})"))
        assert seen[name], f"{where}: series {name} does not exist in Prometheus ({expr})"


def _check_rules(api: httpx.Client) -> None:
    rules = all_rules(api)
    records = [r for r in rules if r["type"] == "recording"]
    alerts = [r for r in rules if r["type"] == "alerting"]
    assert len(records) >= 50 and len(alerts) >= 8
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    seen: dict[str, bool] = {}
    for rule in records:
        assert query(api, rule["query"]), f"recording rule {rule['name']} returned no data"
        assert query(api, rule["name"]), f"recording rule {rule['name']} recorded nothing"
    names = {rule["name"] for rule in alerts}
    assert names == set(ALERTS_MAY_BE_EMPTY), (
        "list every alert in ALERTS_MAY_BE_EMPTY with the reason it may be empty: "
        f"{sorted(names ^ set(ALERTS_MAY_BE_EMPTY))}"
    )
    for rule in alerts:
        query(api, rule["query"])  # parses and evaluates; may be empty (see the list)
        _check_series_exist(api, f"alert {rule['name']}", rule["query"], seen)


def _check_dashboards(api: httpx.Client) -> None:
    seen: dict[str, bool] = {}
    checked = 0
    for name in DASHBOARDS:
        for var, selector, label in variable_queries(name):
            values = {s["metric"].get(label) for s in query(api, substitute(selector))}
            assert values - {None}, f"{name}: variable {var} would have no values"
        for where, expr in dashboard_exprs(name):
            promql = substitute(expr)
            result = query(api, promql)
            checked += 1
            if where not in DASHBOARD_MAY_BE_EMPTY:
                assert result, f"{where}: no data for {promql}"
            _check_series_exist(api, where, promql, seen)
    assert checked >= 60
