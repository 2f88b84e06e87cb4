"""Config warnings: settings that load (never an error) but are almost surely a mistake.

``config_warnings`` (switch/serve/config.py) returns one line per such setting, naming
its key path; ``payswitch serve`` logs each once at start. Each case checks the warning
is there on the bad config and absent on the same config with that one setting sane, and
none fires on the defaults or on the configs shipped in examples/.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from switch.routing.breaker import BreakerConfig, BreakerState, CircuitBreaker
from switch.serve.config import (
    SwitchConfig,
    config_warnings,
    load_config,
    parse_config,
    with_defaults,
)
from tests.conftest import make_config, start_switch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: examples/*.toml that are not switch configs (the simulators' config, a route table).
NOT_SWITCH_CONFIGS = {"channels.toml", "routes.toml"}

#: Two card endpoints, a SWIFT and a QR one, over TCP (as examples/switch-sim.toml).
NETWORKS = """
[[channel_networks]]
kind = "card"
name = "card-a"
port = 7201
[[channel_networks]]
kind = "card"
name = "card-b"
port = 7202
[[channel_networks]]
kind = "swift"
name = "swift"
port = 7203
[[channel_networks]]
kind = "qr"
name = "qr"
port = 7204
[[routes]]
channel = "card"
network = "card-a"
[[routes]]
channel = "swift"
network = "swift"
[[routes]]
channel = "qr"
network = "qr"
"""


def warnings_of(text: str) -> list[str]:
    # parse_config: each of these configs loads (a warning is never an error).
    return config_warnings(parse_config(text))


def only(warnings: list[str], path: str) -> str:
    """The one warning, which names ``path`` first."""
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{path} "), warnings[0]
    return warnings[0]


def test_the_defaults_warn_of_nothing() -> None:
    assert config_warnings(SwitchConfig()) == []
    assert config_warnings(with_defaults(SwitchConfig())) == []
    assert warnings_of(NETWORKS) == []


def test_the_shipped_example_configs_warn_of_nothing() -> None:
    switch_configs = sorted(p.name for p in EXAMPLES.glob("*.toml")
                            if p.name not in NOT_SWITCH_CONFIGS)
    assert switch_configs == ["switch-sim.toml", "switch.toml"]  # a new one: add it here
    for name in switch_configs:
        assert config_warnings(load_config(EXAMPLES / name)) == [], name


# ---------------------------------------------------------------- breakers and stand-in


def test_a_default_breaker_that_opens_on_one_failure_with_stand_in_on_warns() -> None:
    bad = "[resilience.breaker]\nconsecutive_failures = 1\n"
    warning = only(warnings_of(bad), "resilience.breaker.consecutive_failures")
    assert "standin-card" in warning and "open_s = 5 s" in warning
    assert "\n" not in warning
    assert warnings_of("[resilience.breaker]\nconsecutive_failures = 2\n") == []
    # Stand-in off, or no currency it may stand in: the switch declines 91 instead.
    assert warnings_of(bad + "[standin]\nenabled = false\n") == []
    assert warnings_of(bad + "[standin]\nlimits = {}\n") == []


def test_a_card_endpoint_override_names_its_own_path() -> None:
    warning = only(warnings_of(NETWORKS + "[resilience.breakers.card-b]\n"
                                          "consecutive_failures = 1\nopen_s = 30\n"),
                   "resilience.breakers.card-b.consecutive_failures")
    assert "card endpoint(s) card-b;" in warning and "open_s = 30 s" in warning
    # A SWIFT endpoint's breaker never makes the switch stand in.
    assert warnings_of(NETWORKS + "[resilience.breakers.swift]\n"
                                  "consecutive_failures = 1\n") == []


def test_the_default_breaker_warns_only_for_the_card_endpoints_it_applies_to() -> None:
    bad = NETWORKS + "[resilience.breaker]\nconsecutive_failures = 1\n"
    warning = only(warnings_of(bad), "resilience.breaker.consecutive_failures")
    assert "card endpoint(s) card-a, card-b;" in warning
    overridden = "".join(f"[resilience.breakers.{name}]\nconsecutive_failures = 5\n"
                         for name in ("card-a", "card-b"))
    assert warnings_of(bad + overridden) == []  # every card endpoint has its own


@pytest.mark.parametrize(("breaker", "path"), [
    ("consecutive_failures = 1", "consecutive_failures"),
    ("window_calls = 10\nmin_calls = 5\nfailure_ratio = 0.1", "failure_ratio"),
    ("window_calls = 1\nmin_calls = 1", "failure_ratio"),
    ("window_calls = 4\nmin_calls = 4\nfailure_ratio = 0.25", "failure_ratio"),
    ("consecutive_failures = 2", None),
    ("consecutive_failures = 0", None),
    ("window_calls = 10\nmin_calls = 5\nfailure_ratio = 0.11", None),
    ("window_calls = 4\nmin_calls = 4\nfailure_ratio = 0.26", None),
])
def test_a_breaker_warns_exactly_when_one_failure_among_successes_opens_it(
        breaker: str, path: str | None) -> None:
    """Checked against the breaker itself: a window full of successes, then one failure."""
    warnings = warnings_of(f"[resilience.breaker]\n{breaker}\n")
    cfg = parse_config(f"[resilience.breaker]\n{breaker}\n").resilience.breaker
    real = CircuitBreaker("card", cfg)
    for i in range(cfg.window_calls + cfg.consecutive_failures):
        real.record(float(i), ok=True, duration_s=0.01)
    real.record(1000.0, ok=False, duration_s=0.01)
    assert (real.state is BreakerState.OPEN) == (path is not None)
    if path is None:
        assert warnings == []
    else:
        only(warnings, f"resilience.breaker.{path}")


def test_a_time_window_is_not_judged_the_calls_it_holds_depend_on_traffic() -> None:
    assert warnings_of("[resilience.breaker]\nwindow = \"time\"\nmin_calls = 1\n") == []


def test_one_failed_health_probe_opening_the_breaker_warns_while_probes_run() -> None:
    bad = "[resilience.breaker]\nprobe_failures = 1\n"
    warning = only(warnings_of(bad), "resilience.breaker.probe_failures")
    assert "health probe" in warning
    real = CircuitBreaker("card", BreakerConfig(probe_failures=1))
    real.record_probe(0.0, ok=False)
    assert real.state is BreakerState.OPEN
    assert warnings_of("[resilience.breaker]\nprobe_failures = 2\n") == []
    assert warnings_of("[resilience]\nprobe_interval_s = 0\n" + bad) == []  # no probes


def test_each_setting_that_opens_on_one_failure_is_its_own_line() -> None:
    warnings = warnings_of("[resilience.breaker]\nconsecutive_failures = 1\n"
                           "probe_failures = 1\nwindow_calls = 2\nmin_calls = 1\n")
    assert [w.split(" ", 1)[0] for w in warnings] == [
        "resilience.breaker.consecutive_failures", "resilience.breaker.failure_ratio",
        "resilience.breaker.probe_failures"]


# ---------------------------------------------------------------- resolution


def test_an_idempotency_window_shorter_than_the_resolvers_warns_per_channel() -> None:
    bad = "[idempotency]\nretention_s = 3600\n[resolution.qr]\nwithin_s = 7200\n"
    warning = only(warnings_of(bad), "idempotency.retention_s")
    assert "resolution.qr.within_s = 7200 s" in warning and "booked" in warning
    assert warnings_of("[idempotency]\nretention_s = 7200\n[resolution.qr]\n"
                       "within_s = 7200\n") == []
    # Under every channel's (600 s by default): one line each.
    three = warnings_of("[idempotency]\nretention_s = 60\n")
    assert len(three) == 3
    for channel, warning in zip(("card", "swift", "qr"), three, strict=True):
        assert warning.startswith("idempotency.retention_s = 60 s is shorter than "
                                  f"resolution.{channel}.within_s = 600 s:"), warning


def test_a_first_attempt_no_sooner_than_the_resolvers_window_warns() -> None:
    bad = "[resolution.qr]\nfirst_after_s = 600\nwithin_s = 600\n"
    warning = only(warnings_of(bad), "resolution.qr.first_after_s")
    assert "max_attempts = 150 is never reached" in warning
    assert warnings_of("[resolution.qr]\nfirst_after_s = 599\nwithin_s = 600\n") == []
    # One attempt is all that was asked for: nothing contradicts it.
    assert warnings_of(bad + "max_attempts = 1\n") == []


# ---------------------------------------------------------------- serve start-up


@pytest.mark.anyio
async def test_serve_logs_each_config_warning_once_at_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="switch.serve.app")
    for name, extra, expected in (
            ("sane", "", []),
            ("bad", "[resilience.breaker]\nconsecutive_failures = 1\n",
             ["resilience.breaker.consecutive_failures"])):
        caplog.clear()
        work = tmp_path / name
        work.mkdir()
        async with anyio.create_task_group() as tg:
            switch = await start_switch(tg, make_config(work, extra))
            switch.app.request_shutdown()
        logged = [r.getMessage().removeprefix("config: ") for r in caplog.records
                  if r.name == "switch.serve.app" and r.levelno == logging.WARNING
                  and r.getMessage().startswith("config: ")]
        assert [line.split(" ", 1)[0] for line in logged] == expected, name
