"""Review: command-line mistakes end in one line naming the option or file, never a traceback.

Each test here failed on the code before its fix (a traceback, a message that did not name
the option, work done and then lost, or a negative rate on the screen).
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from switch.cli.main import main
from switch.model import Status
from tests.test_ledger import _payment, journal_with

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def no_traceback(result: Result) -> None:
    """Exited by click (a usage error or ClickException), not by an unhandled exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception), result.output)


# --------------------------------------------------------------------------- fault


@pytest.mark.parametrize(("option", "kind"), [("--for", "down"), ("--after", "down"),
                                              ("--period", "flapping"), ("--delay", "late")])
def test_fault_bad_duration_names_the_option(option: str, kind: str) -> None:
    result = invoke("fault", "card-primary", kind, option, "10x")
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert f"invalid value for {option}: '10x'" in result.output


@pytest.mark.parametrize("url", ["http://[::1", "notaurl", "ftp://host/x"])
def test_fault_malformed_admin_url_is_a_usage_error(url: str) -> None:
    result = invoke("fault", "list", "--admin", url)
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert "invalid value for --admin" in result.output


class _Server:
    """A local HTTP server answering GET with bodies from ``answer(path, n)``."""

    def __init__(self, answer: Callable[[str, int], tuple[int, str]]) -> None:
        hits = [0]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits[0] += 1
                status, body = answer(self.path, hits[0])
                data = body.encode()
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.hits = hits
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str, int], tuple[int, str]]], _Server]]:
    servers: list[_Server] = []

    def start(answer: Callable[[str, int], tuple[int, str]]) -> _Server:
        servers.append(_Server(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_fault_list_on_a_server_that_is_not_the_simulators(serve: Callable[..., _Server]
                                                           ) -> None:
    server = serve(lambda path, n: (200, "<html>hello</html>"))
    result = invoke("fault", "list", "--admin", server.url)
    no_traceback(result)
    assert result.exit_code == 1
    assert "not JSON" in result.output and "--admin" in result.output


# --------------------------------------------------------------------------- top


@pytest.mark.parametrize("url", ["http://[::1", "notaurl"])
def test_top_malformed_url_is_a_usage_error(url: str) -> None:
    result = invoke("top", "--once", "--interval", "0.2", "--url", url)
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert "invalid value for --url" in result.output


@pytest.mark.parametrize(("status", "body", "expected"), [
    (404, "<!DOCTYPE HTML><html>not found</html>", "HTTP 404"),
    (200, "hello", "not Prometheus metrics"),
])
def test_top_on_a_page_that_is_not_metrics_says_so(
    serve: Callable[..., _Server], status: int, body: str, expected: str
) -> None:
    server = serve(lambda path, n: (status, body))
    for urls in ([f"{server.url}/metrics"], [f"{server.url}/a", f"{server.url}/b"]):
        result = invoke("top", "--once", "--interval", "0.2",
                        *[arg for url in urls for arg in ("--url", url)])
        no_traceback(result)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
        if len(urls) == 1:
            assert expected in lines[0]


def _metrics(approved: int) -> str:
    return ("# TYPE payswitch_payments_total counter\n"
            f'payswitch_payments_total{{channel="card",status="approved"}} {approved}\n'
            "# TYPE payswitch_ready gauge\npayswitch_ready 1\n")


def test_top_once_across_a_restart_shows_no_negative_rate(serve: Callable[..., _Server]
                                                          ) -> None:
    # 1000 payments, then the switch restarts: 10, then 30.
    counts = {1: 1000, 2: 10}
    server = serve(lambda path, n: (200, _metrics(counts.get(n, 30))))
    result = invoke("top", "--once", "--interval", "0.2", "--url", f"{server.url}/metrics")
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert "card" in result.output
    assert re.search(r"-\d", result.output) is None, result.output  # no "-4950/s"


def test_top_cluster_leaves_out_a_worker_that_restarted(serve: Callable[..., _Server]
                                                        ) -> None:
    a = serve(lambda path, n: (200, _metrics(1000 if n == 1 else 10)))
    b = serve(lambda path, n: (200, _metrics(0 if n == 1 else 20)))
    result = invoke("top", "--once", "--interval", "0.2", "--url", f"{a.url}/metrics",
                    "--url", f"{b.url}/metrics")
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert re.search(r"-\d", result.output) is None, result.output


def test_top_live_keeps_running_when_the_switch_goes_away(serve: Callable[..., _Server]
                                                         ) -> None:
    # Two good scrapes, then the URL answers 503 (a switch shutting down).
    server = serve(lambda path, n: (200, _metrics(n)) if n <= 2 else (503, "draining"))
    proc = subprocess.Popen([sys.executable, "-m", "switch.cli.main", "top", "--interval",
                             "0.2", "--url", f"{server.url}/metrics"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while server.hits[0] < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()  # still running, still trying
        assert server.hits[0] >= 5
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert "Traceback" not in err


# --------------------------------------------------------------------------- settle


def test_settle_out_in_a_missing_directory_is_refused_before_the_cycle_closes(
    tmp_path: Path,
) -> None:
    journal_with(tmp_path, [(_payment("P1", "swift", 1000, "EUR"), [Status.APPROVED])]).close()
    journal = str(tmp_path / "j.db")
    out = tmp_path / "missing" / "settlement.json"
    result = invoke("settle", "--journal", journal, "--out", str(out))
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and str(out.parent) in result.output
    # Nothing was settled: the next run, with a good --out, closes cycle 1 with the transfer.
    good = tmp_path / "settlement.json"
    result = invoke("settle", "--journal", journal, "--out", str(good))
    assert result.exit_code == 0, result.output
    report = json.loads(good.read_text())
    assert report["cycle"] == 1 and report["transfers"] == 1


def test_settle_mode_with_an_unknown_currency_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    journal.write_bytes(b"")
    result = invoke("settle", "--journal", str(journal), "--mode", "USS=gross")
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert "invalid value for --mode: 'USS=gross'" in result.output


# --------------------------------------------------------------------------- not UTF-8


@pytest.mark.parametrize(("args", "option"), [
    (["serve", "--config", "{f}"], "--config"),
    (["channels", "serve", "--config", "{f}"], "--config"),
    (["scenario", "run", "{f}"], "FILE"),
    (["simulate", "--scenario", "{f}"], "--scenario"),
    (["load", "--workload", "{f}"], "--workload"),
    (["load", "--shape", "{f}"], "--shape"),
])
def test_a_toml_file_that_is_not_utf8_names_the_option_file_and_line(
    tmp_path: Path, args: list[str], option: str
) -> None:
    # A comment saved as Latin-1 by an editor: "café" with a single 0xE9 byte, on line 3.
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'name = "x"\n\n# caf\xe9\n')
    result = invoke(*[a.format(f=path) for a in args])
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert f"invalid value for {option}" in result.output
    assert f"{path}:3: not UTF-8" in result.output


# --------------------------------------------------------------------------- load


def test_load_iso_spec_that_is_not_json_names_the_option_and_file(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text('{"2": {"data_enc": "ascii",}\n')
    result = invoke("load", "--protocol", "iso8583", "--iso-spec", str(spec), "--duration",
                    "1", "--rate", "10", "--port", "1", "--out", str(tmp_path / "out"))
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert f"invalid value for --iso-spec: {spec}:1:" in result.output
    assert not (tmp_path / "out").exists()  # refused before the run started


def test_load_target_takes_a_bracketed_ipv6_address(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    import loadtests.harness.loadrun as loadrun

    seen: dict[str, object] = {}

    def fake_run_load(plan: loadrun.LoadPlan, *args: object, **kwargs: object) -> None:
        seen["target"] = (plan.host, plan.port)
        raise RuntimeError("stop here")

    monkeypatch.setattr(loadrun, "run_load", fake_run_load)
    result = invoke("load", "--target", "[::1]:7100", "--duration", "1", "--rate", "10",
                    "--out", str(tmp_path / "out"))
    assert seen["target"] == ("::1", 7100), result.output


# --------------------------------------------------------------------------- serve hosts


def _serve(tmp_path: Path, toml: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "switch.toml"
    config.write_text(toml + f'[journal]\npath = "{tmp_path / "journal.db"}"\n')
    return subprocess.run([sys.executable, "-m", "switch.cli.main", "serve", "--demo",
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@pytest.mark.parametrize(("toml", "key", "why"), [
    ('[server]\nhost = "256.1.1.1"\nport = 0\n[admin]\nport = 0\n', "server.host",
     "cannot resolve"),
    ('[server]\nport = 0\n[admin]\nhost = "nohost.invalid"\nport = 0\n', "admin.host",
     "cannot resolve"),
    # Not an address of this machine (TEST-NET-1), with port 0 (a traceback before) and a
    # fixed port (called "address already in use" before).
    ('[server]\nhost = "192.0.2.1"\nport = 0\n[admin]\nport = 0\n', "server.host",
     "not an address of this machine"),
    ('[server]\nhost = "192.0.2.1"\nport = 7999\n[admin]\nport = 0\n', "server.host",
     "not an address of this machine"),
])
def test_serve_on_a_host_it_cannot_listen_on_names_the_key(
    tmp_path: Path, toml: str, key: str, why: str
) -> None:
    proc = _serve(tmp_path, toml)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert f"{key} = " in lines[0] and why in lines[0], lines[0]
    assert "already in use" not in lines[0]


# --------------------------------------------------------------------------- simulate


@pytest.mark.parametrize(("args", "named"), [
    (["--seeds", "2", "--seed", "5"], "--seed"),
    (["--first-seed", "3", "--seed", "5"], "--seed"),
    (["--seeds", "2", "--shrink"], "--shrink"),
    (["--seeds", "2", "--trace", "P1-1"], "--trace"),
])
def test_simulate_options_of_the_other_mode_are_refused_not_ignored(
    args: list[str], named: str
) -> None:
    result = invoke("simulate", "--duration", "1s", "--processes", "1", *args)
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert named in result.output.strip().splitlines()[-1]


# --------------------------------------------------------------------------- route table


def _latin1_table(tmp_path: Path) -> Path:
    table = tmp_path / "routes.toml"
    table.write_bytes((Path(__file__).resolve().parents[1] / "examples" / "routes.toml")
                      .read_bytes() + b"\n# caf\xe9\n")
    return table


def test_serve_with_a_route_table_that_is_not_utf8_names_its_file_and_line(
        tmp_path: Path) -> None:
    """The config is UTF-8; the table it names is not: refused in one line, exit 2."""
    table = _latin1_table(tmp_path)
    line = table.read_bytes().count(b"\n")  # the comment is the last line
    config = tmp_path / "switch.toml"
    config.write_text(f'[server]\nport = 0\n[admin]\nport = 0\n[journal]\npath = '
                      f'"{tmp_path / "journal.db"}"\n[routing]\ntable = "{table}"\n')
    proc = subprocess.run([sys.executable, "-m", "switch.cli.main", "serve", "--config",
                           str(config), "--demo"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{table}:{line}: not UTF-8" in proc.stderr


def test_a_route_table_that_is_not_utf8_is_a_route_table_error(tmp_path: Path) -> None:
    """Hot reload reads the table the same way, and keeps the old one on a
    RouteTableError (a UnicodeDecodeError escaped its except clause)."""
    from switch.routing.router import read_table_text
    from switch.routing.tablespec import RouteTableError

    with pytest.raises(RouteTableError, match=r"routes\.toml:\d+: not UTF-8"):
        read_table_text(_latin1_table(tmp_path))
