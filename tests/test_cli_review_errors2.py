"""Review (second round): a user's mistake on the command line ends in one `Error:` line
naming the path, option, endpoint, file:key or port, exit 2, never a traceback; and what
the command prints says what the user needs in the user's own terms.

Each test here failed on the code before its fix.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switch.backoffice.recon.classes import Break, Record
from tests.conftest import TEST_AUDITOR_TOKEN, TEST_OPERATOR_TOKEN
from tests.test_cli_errors import one_error_line

ROOT = Path(__file__).resolve().parents[1]
PAYSWITCH = [sys.executable, "-m", "switch.cli.main"]
TOKEN_VARS = ("PAYSWITCH_OPERATOR_TOKEN", "PAYSWITCH_AUDITOR_TOKEN")


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PAYSWITCH, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def environ(**changes: str | None) -> dict[str, str]:
    """This process's environment with ``changes`` (None: unset)."""
    env = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """A plain file where a directory is wanted."""
    path = tmp_path / "afile"
    path.write_text("not a directory\n")
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port this test listens on, the one below it free (a config's port for worker 0)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            port = sock.getsockname()[1]
            with socket.socket() as below:
                try:
                    below.bind(("127.0.0.1", port - 1))
                except OSError:
                    continue
            yield port
            return
    pytest.fail("no port with a free one below it")


# --------------------------------------------------------------- 1. output directories


def test_load_out_that_cannot_be_created_is_one_line_naming_it_and_why(a_file: Path) -> None:
    line = one_error_line(run("load", "--rate", "10", "--duration", "1", "--out", "/proc/x"))
    assert line == "Error: --out /proc/x: cannot create the directory: No such file or directory"
    line = one_error_line(run("load", "--rate", "10", "--duration", "1",
                              "--out", str(a_file / "run")))
    assert line == (f"Error: --out {a_file / 'run'}: cannot create the directory: {a_file} "
                    "is a file, not a directory")


def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    from tests.load.test_merge import CHANNELS, _fake_run

    samples: dict[str, list[int]] = {ch: [] for ch in CHANNELS}
    a, b = tmp_path / "run-a", tmp_path / "run-b"
    _fake_run(a, 1_800_000_000.0, 2, 50, 1, samples)
    _fake_run(b, 1_800_000_000.4, 2, 50, 2, samples)
    return a, b


def test_report_out_under_a_file_is_one_line_before_any_output(tmp_path: Path,
                                                               a_file: Path) -> None:
    a, b = _two_runs(tmp_path)
    proc = run("report", "compare", str(a), str(b), "--out", str(a_file / "x.html"))
    line = one_error_line(proc)
    assert line == f"Error: --out {a_file / 'x.html'}: {a_file}: exists and is not a directory"
    assert proc.stdout == ""  # refused before the comparison is shown
    line = one_error_line(run("report", "merge", str(a), str(b), "--out", str(a_file / "m")))
    assert line == (f"Error: --out {a_file / 'm'}: cannot create the directory: {a_file} is a "
                    "file, not a directory")


def test_scenario_out_that_is_a_file_is_one_line(tmp_path: Path, a_file: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    shutil.copy(ROOT / "loadtests" / "scenarios" / "spike-3x.toml", scenario)
    line = one_error_line(run("scenario", "run", str(scenario), "--out", str(a_file)))
    assert line == f"Error: {a_file}: exists and is not a directory"
    line = one_error_line(run("scenario", "run", str(scenario), "--out", str(a_file / "sub")))
    assert line == (f"Error: {a_file / 'sub'}: cannot create the directory: {a_file} is a "
                    "file, not a directory")


# --------------------------------------------------------------- 2. `Error:`, exit 2


def test_a_malformed_threshold_is_click_form_error() -> None:
    line = one_error_line(run("load", "--threshold", "p99<<1ms"))
    assert line.startswith("Error: --threshold: threshold 'p99<<1ms': expected ")


def test_report_compare_of_a_missing_run_is_click_form_error(tmp_path: Path) -> None:
    line = one_error_line(run("report", "compare", "A", str(tmp_path / "nonexist")))
    assert line == "Error: A: not a directory"
    line = one_error_line(run("report", "merge", "A", "B", "--threshold", "p99<<1"))
    assert line.startswith("Error: --threshold: ")


def test_load_metrics_port_taken_is_click_form_error(tmp_path: Path, busy_port: int) -> None:
    line = one_error_line(run("load", "--rate", "10", "--duration", "1", "--out",
                              str(tmp_path / "out"), "--metrics-host", "127.0.0.1",
                              "--metrics-port", str(busy_port)))
    assert line.startswith(f"Error: --metrics-port {busy_port}: cannot listen on "
                           f"127.0.0.1:{busy_port}: ")


# --------------------------------------------------------------- 2, 3. fault, tokens


@pytest.fixture(scope="module")
def simulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example simulators on free ports; their admin URL. Their tokens are the ones
    every test finds in its environment (tests/conftest.py)."""
    from loadtests.harness.processes import start_channels, stop_switch

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAYSWITCH_OPERATOR_TOKEN", TEST_OPERATOR_TOKEN)
        patch.setenv("PAYSWITCH_AUDITOR_TOKEN", TEST_AUDITOR_TOKEN)
        proc, ready = start_channels(tmp_path_factory.mktemp("channels"))
    try:
        yield f"http://127.0.0.1:{ready['admin_port']}"
    finally:
        stop_switch(proc)


def test_fault_on_an_unknown_endpoint_names_it_and_the_known_ones(simulators: str) -> None:
    line = one_error_line(run("fault", "nosuch", "down", "--admin", simulators))
    assert line == (f"Error: {simulators}/faults: no network named 'nosuch'; known: "
                    "card-primary, card-secondary, qr, swift")
    line = one_error_line(run("fault", "clear", "nosuch", "--admin", simulators))
    assert line == (f"Error: {simulators}/faults/nosuch: no network named 'nosuch'; known: "
                    "card-primary, card-secondary, qr, swift")


def test_a_contradicting_fault_is_said_in_the_users_terms(simulators: str) -> None:
    injected = run("fault", "card-secondary", "down", "--for", "60s", "--admin", simulators)
    assert injected.returncode == 0, injected.stderr
    fault_id = json.loads(injected.stdout.removeprefix("injected: "))["id"]
    try:
        line = one_error_line(run("fault", "card-secondary", "blackhole", "--after", "5s",
                                  "--for", "10s", "--admin", simulators))
    finally:
        run("fault", "clear", "card-secondary", "--admin", simulators)
    assert line.startswith(f"Error: blackhole on card-secondary contradicts active fault "
                           f"{fault_id} (down on card-secondary, "), line
    assert " s left): they would overlap starting in 5 s, for 10 s; clear it first " \
        "(payswitch fault clear card-secondary), or start yours after it ends (--after " in line
    assert "[" not in line  # no window on the simulators' internal clock


def test_fault_without_a_token_says_how_to_give_one(simulators: str) -> None:
    env = environ(**dict.fromkeys(TOKEN_VARS))
    line = one_error_line(run("fault", "card-primary", "down", "--admin", simulators, env=env))
    assert line == (f"Error: {simulators}/faults: HTTP 401: the simulators' admin API wants a "
                    "token: set $PAYSWITCH_OPERATOR_TOKEN or pass --token-file")


def test_a_wrong_token_is_refused_not_missing(simulators: str, tmp_path: Path) -> None:
    wrong = "wrong-token-0123456789"
    env = environ(PAYSWITCH_OPERATOR_TOKEN=wrong)
    line = one_error_line(run("fault", "card-primary", "down", "--admin", simulators, env=env))
    assert line == (f"Error: {simulators}/faults: HTTP 401: the simulators refused the token "
                    "from $PAYSWITCH_OPERATOR_TOKEN: it is not one they were started with")
    token_file = tmp_path / "token"
    token_file.write_text(wrong)
    line = one_error_line(run("fault", "list", "--token-file", str(token_file), "--admin",
                              simulators))
    assert "refused the token from --token-file" in line and "set $" not in line
    # A token of the auditor (read-only) on a change: a user's mistake too, exit 2.
    token_file.write_text(TEST_AUDITOR_TOKEN)
    line = one_error_line(run("fault", "clear", "card-primary", "--token-file", str(token_file),
                              "--admin", simulators))
    assert line.startswith(f"Error: {simulators}/faults/card-primary: HTTP 403: ")
    assert "needs the operator role" in line
    # The admin API itself: refused, not "required"; and nothing about the right one.
    refused = httpx.post(f"{simulators}/faults", headers={"authorization": f"Bearer {wrong}"})
    assert refused.status_code == 401
    assert refused.json() == {
        "error": "the bearer token was refused: it is not a token of this admin API"}
    assert TEST_OPERATOR_TOKEN not in refused.text and TEST_AUDITOR_TOKEN not in refused.text
    missing = httpx.post(f"{simulators}/faults")
    assert missing.status_code == 401 and "a bearer token is required" in missing.text


# --------------------------------------------------------------- 4, 5. serve


def _switch_toml(tmp_path: Path, port: int = 0) -> Path:
    config = tmp_path / "switch.toml"
    config.write_text(f"[server]\nport = {port}\n[admin]\nport = 0\n"
                      f'[journal]\npath = "{tmp_path / "journal.db"}"\n')
    return config


def test_a_busy_port_of_a_layout_names_the_layout_not_the_config(tmp_path: Path,
                                                                 busy_port: int) -> None:
    ports = [busy_port + 1, busy_port + 2, busy_port]  # worker 2's is the busy one
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"workers": [
        {"shard": i, "host": "127.0.0.1", "port": p, "admin_port": busy_port + 3 + i,
         "journal": str(tmp_path / f"shard-{i}" / "journal.db")}
        for i, p in enumerate(ports)]}))
    config = _switch_toml(tmp_path, port=7100)
    # A worker of a layout takes the cluster's token key (--demo is refused there).
    line = one_error_line(run("serve", "--config", str(config), "--cluster", str(layout),
                              "--shard", "2", env=environ(PAYSWITCH_TOKEN_KEY="k" * 32)))
    assert line.startswith(f"Error: {layout}: workers[2].port = {busy_port} on 127.0.0.1: "
                           "address already in use; "), line
    assert str(config) not in line


def test_a_busy_port_of_workers_says_it_is_the_config_port_plus_the_worker(
        tmp_path: Path, busy_port: int) -> None:
    config = _switch_toml(tmp_path, port=busy_port - 1)
    line = one_error_line(run("serve", "--demo", "--config", str(config), "--workers", "2"))
    assert f"{config}: " in line
    assert f"server.port = {busy_port - 1} (worker 1: {busy_port}) on 127.0.0.1" in line


def test_a_token_of_the_wrong_length_reads_an_operator_token(tmp_path: Path) -> None:
    env = environ(PAYSWITCH_OPERATOR_TOKEN="short", PAYSWITCH_AUDITOR_TOKEN=None)
    line = one_error_line(run("serve", "--demo", "--config", str(_switch_toml(tmp_path)),
                              env=env))
    assert line == ("Error: $PAYSWITCH_OPERATOR_TOKEN: an operator token must be 16..512 "
                    "characters, got 5")


# --------------------------------------------------------------- 6. reconcile


def test_reconcile_lists_breaks_in_major_units(tmp_path: Path) -> None:
    from switch.currency import CURRENCIES
    from switch.journal import open_database
    from switch.protocols.settlement_files import SettlementEntry, encode_card_clearing

    open_database(tmp_path / "journal.db", "group").close()
    files = tmp_path / "files"
    files.mkdir()
    t = 1_700_000_000_000_000
    entries = [SettlementEntry("000000123456", "000001|TERM0001", 66275, "EUR", "settled", t),
               SettlementEntry("000000123457", "000002|TERM0001", 12345, "BHD", "settled", t),
               SettlementEntry("000000123458", "000003|TERM0001", 5000, "JPY", "settled", t)]
    numeric = {alpha: num for alpha, (num, _) in CURRENCIES.items()}
    (files / "visa-0001.clr").write_text(encode_card_clearing("visa", "1", entries, numeric))
    proc = run("reconcile", "--journal", str(tmp_path / "journal.db"), "--files", str(files),
               "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    assert "  missing_in_switch: card 000000123456 662.75 EUR\n" in proc.stdout
    assert "  missing_in_switch: card 000000123457 12.345 BHD\n" in proc.stdout
    assert "  missing_in_switch: card 000000123458 5000 JPY\n" in proc.stdout
    csv = (tmp_path / "out" / "breaks.csv").read_text()
    assert ",000000123456,662.75,EUR," in csv  # the listing says what breaks.csv says


def test_an_amount_mismatch_shows_the_money_at_stake_and_both_sides() -> None:
    from switch.cli.backoffice import break_line

    t = 1_700_000_000_000_000
    switch = Record("swift", "13df0c2e", 66275, "EUR", "approved", t, "P1")
    network = Record("swift", "13df0c2e", 72902, "EUR", "settled", t, "swift-1.xml")
    line = break_line(Break("amount_mismatch", switch, network, "check"))
    assert line == ("amount_mismatch: swift 13df0c2e 66.27 EUR at stake (switch 662.75, "
                    "network 729.02)")


# --------------------------------------------------------------- 7. simulate


def test_simulate_says_when_there_is_nothing_to_shrink_or_trace() -> None:
    proc = run("simulate", "--seed", "3", "--duration", "5s", "--shrink", "--trace", "nosuch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "invariants: all held" in proc.stdout
    assert ("trace of nosuch: no payment with this id or idempotency key in seed 3's run"
            in proc.stdout)
    assert "nothing to shrink: every invariant held on seed 3" in proc.stdout


def test_simulate_an_invalid_scenario_is_one_error_line(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text("name = 5\n")
    proc = run("simulate", "--scenario", str(scenario))
    assert one_error_line(proc) == (f"Error: invalid scenario: {scenario}: name: Expected "
                                    "`str`, got `int`")
    assert proc.stdout == ""
