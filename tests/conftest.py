"""Shared fixtures. Async tests run on both backends: asyncio with uvloop, and trio.

Never import locust here or in any test module: it monkey-patches the whole process with
gevent. Locust is exercised through subprocesses only.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from switch.serve.app import Endpoints, SwitchApp
from switch.serve.config import SwitchConfig, parse_config, with_defaults


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


#: Admin bearer tokens every test process has (issue 11 #13): the admin APIs refuse state
#: changes without one. Tests that check the refusal remove or replace them.
TEST_OPERATOR_TOKEN = "test-operator-token-0123456789"
TEST_AUDITOR_TOKEN = "test-auditor-token-0123456789"


@pytest.fixture(autouse=True)
def _admin_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYSWITCH_OPERATOR_TOKEN", TEST_OPERATOR_TOKEN)
    monkeypatch.setenv("PAYSWITCH_AUDITOR_TOKEN", TEST_AUDITOR_TOKEN)


@pytest.fixture(autouse=True)
def _log_levels() -> Iterator[None]:
    """Each test starts with the switch's and the simulators' loggers as it found them: a
    test running a campaign in-process (``campaign.quiet()`` silences both for good, as a
    worker process wants) made a later test's log assertion fail, in that order only."""
    loggers = [logging.getLogger(name) for name in ("switch", "channels")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def make_config(tmp_path: Path, extra: str = "", server: str = "") -> SwitchConfig:
    text = f"""
[server]
port = 0
{server}
[admin]
port = 0
[journal]
path = "{tmp_path / "journal.db"}"
{extra}
"""
    return with_defaults(parse_config(text))


class RunningSwitch:
    def __init__(self, app: SwitchApp, endpoints: Endpoints) -> None:
        self.app = app
        self.endpoints = endpoints


async def start_switch(
    tg: anyio.abc.TaskGroup, config: SwitchConfig, adapters: dict[str, object] | None = None
) -> RunningSwitch:
    app = SwitchApp(config, adapters)  # type: ignore[arg-type]
    endpoints = await tg.start(app.run)
    return RunningSwitch(app, endpoints)


@pytest.fixture
async def running_switch(tmp_path: Path) -> AsyncIterator[RunningSwitch]:
    # Shedding on event-loop lag stays out of the way (60 s, as test_server_bounds does):
    # on a loaded 2-core box the loop of a switch just started fell 245 ms behind, and a
    # test of something else got "overloaded" for its one payment.
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, make_config(tmp_path, server="max_queue_delay_s = 60"))
        yield switch
        switch.app.request_shutdown()


@dataclass(frozen=True)
class DemoRun:
    """One finished ``payswitch demo``: what it printed and the work directory it left."""

    proc: subprocess.CompletedProcess[str]
    workdir: Path


#: The short demo's load: 3 s at 500/s, the demo's default seed (42).
SHORT_DEMO_ARGS = ("--duration", "3", "--rate", "500")


@pytest.fixture(scope="session")
def short_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """A short demo run once for the session: several tests read its output, journal and
    logs (each demo costs seconds of start-up, settlement and reconciliation)."""
    workdir = tmp_path_factory.mktemp("short-demo")
    proc = subprocess.run([sys.executable, "-m", "switch.cli.main", "demo", *SHORT_DEMO_ARGS,
                           "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=180)
    return DemoRun(proc, workdir)
