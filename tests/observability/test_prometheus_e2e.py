"""End to end against a real Prometheus: every PromQL expression we ship must work on the
data a live switch and live network simulators export.

1. Start the network simulators (`channels serve`, examples/channels.toml) and the switch
   (a real `payswitch serve` process) wired to them through examples/routes.toml, whose
   card target fails over from card-primary to card-secondary; all on loopback.
2. Start Debian's /usr/bin/prometheus on a free loopback port, scraping the switch's and the
   simulators' admin ports every second and loading dashboards/prometheus/rules/*.yml.
3. Drive a short open-loop load, and through the simulators' admin API (POST /faults) take
   card-primary down for a few seconds in the middle of it: card payments fail over, are
   retried, and card-primary's breaker opens and closes again, so the counters that only
   exist after such an event (failovers, breaker transitions) have data too.
4. Through the HTTP API: every rule is healthy; every recording rule and every dashboard
   query (Grafana variables substituted) parses and returns data; every alert expression
   parses, and every series it reads exists (an alert on a misspelt metric would otherwise
   stay silent forever). Alerts may return nothing: each one is listed below with why.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests.harness.clusterproc import free_port
from loadtests.harness.demo import DEMO_CONFIG
from loadtests.harness.processes import start_channels, start_switch, stop_switch
from switch.serve.http import admin_headers
from tests.observability.test_dashboards import (
    DASHBOARDS,
    NAME,
    dashboard_exprs,
    substitute,
    variable_queries,
)
from tests.observability.test_promtool import REPO, RULE_FILES, drive_load, require_binary

#: Alerts fire only when something is wrong; on a healthy run their expression is empty.
#: Every alert must be listed, with the reason it may be empty.
ALERTS_MAY_BE_EMPTY = {
    "PayswitchAvailabilityBudgetBurn": "fires only while failures burn the availability budget "
    "(the simulators' seeded errors and the injected fault may or may not trip it in a short "
    "run)",
    "PayswitchLatencyBudgetBurn": "fires only while over 1% of payments take more than 250 ms",
    "PayswitchUnresolvedPaymentsStuck": "needs a network that stops answering status checks",
    "PayswitchUnresolvedPaymentsEscalated": "needs a payment unknown past its channel's "
    "resolution window (10 minutes by default)",
    "PayswitchJournalCommitSlow": "needs a slow disk: journal commit p99 over 50 ms",
    "PayswitchJournalBacklogGrowing": "needs a journal writer that cannot keep up",
    "PayswitchNoTraffic": "the test sends traffic",
    "PayswitchNotReady": "the switch is ready throughout the test",
    "PayswitchTargetDown": "the switch is up throughout the test",
    "PayswitchBreakerOpen": "needs a breaker not closed for 5 minutes; the injected fault "
    "opens card-primary's for a few seconds only",
    "PayswitchStoreForwardGrowing": "needs advices piling up for 10 minutes (every card "
    "endpoint down, card payments approved in stand-in)",
    "PayswitchStoreForwardStale": "needs an advice undelivered for 10 minutes",
    "PayswitchRetryBudgetExhausted": "needs retries denied for budget for 5 minutes; the "
    "short fault stays within the budget",
    "PayswitchRecordQuarantined": "needs a journal record that cannot be encoded",
}
#: Dashboard queries allowed to return nothing, with the reason. None today: panels use
#: `or vector(0)` where a series can legitimately be absent (e.g. ALERTS), every other
#: counter is bound at 0 from the start, and the injected fault creates the ones that only
#: exist after an event (failovers, breaker transitions).
DASHBOARD_MAY_BE_EMPTY: dict[str, str] = {}

#: The switch's route table: card payments go to card-primary, failing over to card-secondary.
ROUTES = REPO / "examples" / "routes.toml"
SIMULATORS_JOB = "payswitch-channels"
#: Injected through the simulators' admin API as the load starts (start_s counts from the
#: POST): card-primary refuses connections for 3 s. Its breaker opens at once and goes
#: half-open after resilience.breaker.open_s (5 s), and the probes close it while the load
#: still runs.
FAULTS = ({"kind": "down", "endpoint": "card-primary", "start_s": 1.5, "duration_s": 3.0},)
LOAD_RATE = 150.0
LOAD_S = 9.0

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
  - job_name: {simulators_job}
    static_configs:
      - targets: ["127.0.0.1:{channels_admin_port}"]
"""


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


@contextlib.contextmanager
def switch_and_simulators(workdir: Path) -> Iterator[tuple[dict[str, int], dict[str, Any]]]:
    """The example simulators and a switch routed to them; both stopped on the way out."""
    with contextlib.ExitStack() as stack:
        channels_proc, ready = start_channels(workdir)
        stack.callback(stop_switch, channels_proc)
        networks = "".join(
            f'[[channel_networks]]\nkind = "{info["kind"]}"\nname = "{name}"\n'
            f"port = {info['port']}\n\n"
            for name, info in sorted(ready.items())
            if name != "admin_port"
        )
        config = workdir / "switch.toml"
        config.write_text(
            DEMO_CONFIG.format(seed=11, journal=workdir / "journal.db", admin_port=0)
            + f"\n[routing]\ntable = {json.dumps(str(ROUTES))}\n\n"
            + networks
        )
        switch_proc, endpoints = start_switch(config, workdir / "ready.json")
        stack.callback(stop_switch, switch_proc)
        yield endpoints, ready


def start_prometheus(config: Path, tsdb: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                require_binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tsdb}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def inject_faults(admin_port: int) -> None:
    for fault in FAULTS:
        response = httpx.post(f"http://127.0.0.1:{admin_port}/faults", json=fault, timeout=5,
                              headers=admin_headers())
        assert response.status_code == 201, response.text


def test_every_dashboard_and_rule_expression_against_real_prometheus(tmp_path: Path) -> None:
    require_binary("prometheus")
    work = tmp_path / "run"
    work.mkdir()
    with switch_and_simulators(work) as (endpoints, channels), contextlib.ExitStack() as stack:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            PROMETHEUS_CONFIG.format(
                rule_files="\n".join(f'  - "{path}"' for path in RULE_FILES),
                admin_port=endpoints["admin_port"],
                simulators_job=SIMULATORS_JOB,
                channels_admin_port=channels["admin_port"],
            )
        )
        proc = start_prometheus(config, tmp_path / "tsdb", port, tmp_path / "prometheus.log")
        stack.callback(stop_process, proc)
        api = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
        wait_until("prometheus ready", lambda: api.get("/-/ready").status_code == 200, 20, proc)
        # Ready is not scraping: service discovery hands over its first targets up to 5 s
        # later. The fault must happen while both jobs are scraped.
        for job in ("payswitch", SIMULATORS_JOB):
            wait_until(
                f"a successful scrape of {job}",
                lambda job=job: bool(query(api, f'up{{job="{job}"}} == 1')),
                20,
                proc,
            )
        inject_faults(channels["admin_port"])
        stats = drive_load(endpoints["port"], rate=LOAD_RATE, duration_s=LOAD_S)
        assert stats.replies > 0.8 * LOAD_RATE * LOAD_S
        for job in ("payswitch", SIMULATORS_JOB):
            wait_until(
                f"three scrapes of {job}",
                lambda job=job: _value(api, f'count_over_time(up{{job="{job}"}}[1m])') >= 3,
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
        _check_the_fault_happened(api)
        _check_rules(api)
        _check_dashboards(api)


def _value(api: httpx.Client, promql: str) -> float:
    result = query(api, promql)
    return float(result[0]["value"][1]) if result else 0.0


def _check_the_fault_happened(api: httpx.Client) -> None:
    """The injected fault did what the dashboards are checked against: else the panels
    that need it would fail below with a less useful message."""
    assert _value(api, 'max_over_time(channels_active_faults{network="card-primary"}[5m])') >= 1
    assert _value(api, "sum(payswitch_failovers_total)") > 0, "no failover during the fault"
    opened = 'sum(payswitch_breaker_transitions_total{endpoint="card-primary",to_state="open"})'
    assert _value(api, opened) > 0, "card-primary's breaker never opened"


def _check_series_exist(api: httpx.Client, where: str, expr: str, seen: dict[str, bool]) -> None:
    for name in set(NAME.findall(expr)) - {"ALERTS"}:
        if name not in seen:
            seen[name] = bool(query(api, f"count({name})"))
        assert seen[name], f"{where}: series {name} does not exist in Prometheus ({expr})"


def _check_rules(api: httpx.Client) -> None:
    rules = all_rules(api)
    records = [r for r in rules if r["type"] == "recording"]
    alerts = [r for r in rules if r["type"] == "alerting"]
    assert len(records) >= 50 and len(alerts) >= 12
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
    assert checked >= 100
