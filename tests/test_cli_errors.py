"""Everyday mistakes get one line naming the file, port or key, what to do, and exit 2."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PAYSWITCH = [sys.executable, "-m", "switch.cli.main"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PAYSWITCH, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The process failed as a user's mistake: exit 2, a single `Error:` line, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other process (here: this test) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("key", ["server", "admin", "http"])
def test_serve_on_a_busy_port_names_the_port(tmp_path: Path, busy_port: int, key: str) -> None:
    ports = {"server": 0, "admin": 0, key: busy_port}
    config = tmp_path / "switch.toml"
    config.write_text("".join(f"[{k}]\nport = {p}\n" for k, p in ports.items())
                      + ("enabled = true\n" if key == "http" else "")
                      + f'[journal]\npath = "{tmp_path / "journal.db"}"\n')
    line = one_error_line(run("serve", "--demo", "--config", str(config)))
    assert f"{config}: {key}.port = {busy_port} on 127.0.0.1: address already in use" in line
    assert "free one" in line


def test_channels_serve_on_a_busy_port_names_the_network(tmp_path: Path, busy_port: int) -> None:
    config = tmp_path / "channels.toml"
    text = (ROOT / "examples" / "channels.toml").read_text()
    text = re.sub(r"^port = \d+", "port = 0", text, flags=re.M)
    text = text.replace('name = "swift"\nkind = "swift"\nport = 0',
                        f'name = "swift"\nkind = "swift"\nport = {busy_port}')
    config.write_text(text)
    line = one_error_line(run("channels", "serve", "--config", str(config)))
    assert f"networks[2].port (swift) = {busy_port} on 127.0.0.1: address already in use" in line


@pytest.mark.parametrize("command", [["settle", "--journal"],
                                     ["reconcile", "--files", "{files}", "--journal"]])
@pytest.mark.parametrize("content", [b"not a database at all\n" * 10, b""])
def test_a_journal_that_is_not_one_is_refused_in_one_line(
        tmp_path: Path, command: list[str], content: bytes) -> None:
    journal = tmp_path / "journal.db"
    journal.write_bytes(content)
    (tmp_path / "files").mkdir()
    args = [a.replace("{files}", str(tmp_path / "files")) for a in command]
    line = one_error_line(run(*args, str(journal)))
    assert line.startswith(f"Error: {journal}: not a payswitch journal")


@pytest.mark.parametrize("sidecar", ["journal.db.stan", "journal.db.rrn"])
def test_serve_with_a_damaged_trace_number_sidecar_names_it_in_one_line(
        tmp_path: Path, sidecar: str) -> None:
    # It was an ExceptionGroup traceback and exit 1.
    config = tmp_path / "switch.toml"
    config.write_text(f'[journal]\npath = "{tmp_path / "journal.db"}"\n'
                      "[server]\nport = 0\n[admin]\nport = 0\n")
    (tmp_path / sidecar).write_text("12x\n")
    line = one_error_line(run("serve", "--demo", "--config", str(config), timeout=120))
    assert str(tmp_path / sidecar) in line, line


def test_serve_on_a_corrupt_journal_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    journal = tmp_path / "journal.db"
    config.write_text(f'[journal]\npath = "{journal}"\n[server]\nport = 0\n[admin]\nport = 0\n')
    journal.write_bytes(b"\x01" * 5000)
    proc = run("serve", "--demo", "--config", str(config), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("Error: ")]
    assert f"journal storage failed: {journal}:" in line, line


@pytest.mark.parametrize("command", [["settle"], ["reconcile", "--files", "{files}"]])
def test_the_same_journal_named_twice_is_refused(tmp_path: Path, command: list[str]) -> None:
    # Every payment of it was a duplicate (and settle posted it twice over).
    from switch.journal import open_database

    open_database(tmp_path / "journal.db", "group").close()
    (tmp_path / "files").mkdir()
    args = [a.replace("{files}", str(tmp_path / "files")) for a in command]
    line = one_error_line(run(*args, "--journal", str(tmp_path / "journal.db"),
                              "--journal", f"{tmp_path}/./journal.db"))
    assert "the same file as --journal" in line, line


def test_channels_config_errors_read_like_the_switch_config(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "channels.toml").read_text()
    bad_kind = tmp_path / "kind.toml"
    bad_kind.write_text(text.replace('kind = "qr"', 'kind = "qrcode"'))
    line = one_error_line(run("channels", "serve", "--config", str(bad_kind)))
    assert line == (f"Error: {bad_kind}: networks[3].kind: Invalid enum value 'qrcode' "
                    "(expected one of: 'card', 'qr', 'swift')")
    typo = tmp_path / "typo.toml"
    typo.write_text(text.replace("seed = 11", "sed = 11"))
    line = one_error_line(run("channels", "serve", "--config", str(typo)))
    assert line.startswith(f"Error: {typo}: networks[0].sed: unknown key (known keys: name, kind")
    missing = one_error_line(run("channels", "serve", "--config", str(tmp_path / "no.toml")))
    assert missing == f"Error: {tmp_path / 'no.toml'}: cannot read: No such file or directory"


def test_switch_config_enum_errors_list_the_valid_values(tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    config.write_text('[journal]\nmode = "fast"\n')
    line = one_error_line(run("serve", "--config", str(config)))
    assert line == (f"Error: {config}: journal.mode: Invalid enum value 'fast' "
                    "(expected one of: 'group', 'off', 'sync')")


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and re.fullmatch(r"payswitch, version \S+\n", proc.stdout)


def test_fault_without_a_kind_lists_the_kinds() -> None:
    proc = run("fault", "card-primary")
    assert proc.returncode == 2
    assert "missing KIND after 'card-primary': one of down, blackhole" in proc.stderr
    assert "None" not in proc.stderr


def test_fault_help_examples_name_real_networks_and_valid_faults(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each example in `payswitch fault --help` runs as written against the example networks."""
    from switch.cli import fault as fault_cli
    from switch.cli.main import main

    networks = {n["name"] for n in
                tomllib.loads((ROOT / "examples" / "channels.toml").read_text())["networks"]}
    sent: list[dict[str, object]] = []

    def fake_call(method: str, url: str, content: bytes | None = None,
                  headers: dict[str, str] | None = None) -> object:
        assert method == "POST" and content is not None
        sent.append(msgspec.json.decode(content))
        return {"id": len(sent)}

    monkeypatch.setattr(fault_cli, "_call", fake_call)
    runner = CliRunner()
    help_text = runner.invoke(main, ["fault", "--help"]).output
    after = help_text.split("Examples:", 1)[1]
    examples = [line.strip() for line in after.splitlines()
                if line.strip().startswith("payswitch fault ")]
    assert len(examples) >= 3, help_text
    for example in examples:
        result = runner.invoke(main, shlex.split(example)[1:])
        assert result.exit_code == 0, (example, result.output)
        assert sent[-1]["endpoint"] in networks, example
    assert len(sent) == len(examples)


def test_demo_scenario_unknown_name_lists_the_library() -> None:
    proc = run("demo", "--scenario", "no-such-outage")
    assert proc.returncode == 2
    assert "no scenario 'no-such-outage' in loadtests/scenarios (known: " in proc.stderr
    assert "card-primary-outage" in proc.stderr and "swift-blackhole" in proc.stderr


def test_demo_scenario_overrides_are_checked_like_the_file(tmp_path: Path) -> None:
    """--duration shorter than the scenario's fault start is refused naming the key."""
    proc = run("demo", "--scenario", "primary-outage", "--duration", "3")
    line = one_error_line(proc)
    assert "faults[0].start_s: 5.0 is not before the end of the run (3.0 s)" in line
    mixed = run("demo", "--scenario", "primary-outage", "--networks", "standin")
    assert mixed.returncode == 2 and "--networks: not used with --scenario" in mixed.stderr


def test_a_simulation_too_big_for_memory_is_refused_before_it_starts() -> None:
    # A simulated day at 200/s keeps ~17M payments until its checks: far more memory than
    # the machine has. The kernel's OOM killer would end it hours in, printing nothing.
    line = one_error_line(run("simulate", "--seed", "1", "--duration", "1000d"))
    assert "--duration 1000d at --rate 200/s needs about" in line
    assert "GiB available; lower --duration or --rate" in line


def test_the_memory_plan_counts_every_seed_running_at_once() -> None:
    from switch.cli.errors import UserError
    from switch.cli.simulate import check_memory, planned_bytes

    ten_minutes = planned_bytes(600, 200, 1)
    assert planned_bytes(600, 200, 2) == 2 * ten_minutes
    check_memory("10m", 600, 200, 1, available=2 * ten_minutes)  # fits
    check_memory("10m", 600, 200, 8, available=None)  # unknown: not refused on a guess
    with pytest.raises(UserError, match=r"\(4 seeds at once\).*--processes"):
        check_memory("10m", 600, 200, 4, available=2 * ten_minutes)
