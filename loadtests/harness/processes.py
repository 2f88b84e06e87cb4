"""Start and stop the switch and the simulators as subprocesses for the harness (demo,
scenarios, tests): ports, ready files, logs, admin tokens."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from switch.serve.http import ensure_demo_tokens

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CHANNELS = ROOT / "examples" / "channels.toml"
CHANNELS_ADMIN_PORT = 7280  # what `payswitch fault` talks to by default
_PORT_LINE = re.compile(r"^port\s*=\s*\d+", re.M)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_switch(
    config_path: Path, ready_file: Path, backend: str = "asyncio", timeout_s: float = 30.0
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """Start ``payswitch serve`` and wait until its ready file appears.

    Its logs (JSON lines) go to ``switch.log`` beside the ready file: a pipe nobody reads
    would block the switch once full.
    """
    ensure_demo_tokens()  # admin tokens in the environment the switch inherits
    ready_file.unlink(missing_ok=True)
    log_path = ready_file.with_name("switch.log")
    log_file = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "switch.cli.main",
            "serve",
            "--config",
            str(config_path),
            "--backend",
            backend,
            "--ready-file",
            str(ready_file),
            # A harness run is a demo: without a configured key, serve generates a random
            # one per work dir (token.key beside the journal) instead of refusing.
            "--demo",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        # Its own session: a Ctrl-C at the terminal reaches only the parent, which stops
        # the switch in order (drain, flush) after the load, instead of all at once.
        start_new_session=True,
    )
    log_file.close()  # the child holds its own descriptor
    deadline = time.monotonic() + timeout_s  # wall clock: waiting on another process
    while not ready_file.exists():
        if proc.poll() is not None:
            err = log_path.read_text()[-4000:]
            raise RuntimeError(f"switch exited with {proc.returncode}: {err}")
        if time.monotonic() > deadline:  # wall clock: another process
            proc.kill()
            raise RuntimeError("switch did not become ready in time")
        time.sleep(0.05)
    return proc, json.loads(ready_file.read_text())


def stop_switch(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


#: How long stop_channels waits for the simulators' last settlements: longer than the
#: example SWIFT network's settlement delay (2 s) and the switch's stop before it.
SETTLE_BOUND_S = 10.0


def settlements_pending(admin_port: int) -> float | None:
    """Payments the simulators accepted and have yet to settle (their /metrics gauge
    ``channels_settlements_pending``, summed), or None if it cannot be read."""
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("channels_settlements_pending{"))


def stop_channels(proc: subprocess.Popen[bytes], ready: dict[str, Any],
                  bound_s: float = SETTLE_BOUND_S) -> float | None:
    """Stop the simulators once their last accepted payments settled (SWIFT's ACSC comes
    its settlement delay after the acceptance), so that their final cut-off writes every
    settlement; bounded by ``bound_s``. Returns how many were still pending (0: none; None:
    the simulators' /metrics could not be read).

    It used to sleep for longer than the delay, whatever was left: three seconds of every
    demo and scenario, most often with nothing pending at all.
    """
    deadline = time.monotonic() + bound_s  # wall clock: waiting on another process
    pending = settlements_pending(int(ready["admin_port"]))
    while pending and time.monotonic() < deadline:  # wall clock: as above
        time.sleep(0.05)
        pending = settlements_pending(int(ready["admin_port"]))
    stop_switch(proc)
    return pending


def start_channels(
    base: Path,
    example: Path = EXAMPLE_CHANNELS,
    timeout_s: float = 30.0,
    discrepancy_rate: float = 0.0,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Run the example simulators as their own process, every network on a free port.

    The admin API takes 7280 (the `payswitch fault` default) when it is free. On a shared
    machine another run can take it between that check and the simulators' bind: then
    they start again with a free port instead.
    """
    admin_port = CHANNELS_ADMIN_PORT if _port_free(CHANNELS_ADMIN_PORT) else 0
    try:
        return _start_channels(base, example, timeout_s, discrepancy_rate, admin_port)
    except PortTaken:
        return _start_channels(base, example, timeout_s, discrepancy_rate, 0)


class PortTaken(RuntimeError):
    """A child process found its preferred port taken (after we saw it free)."""


def _start_channels(
    base: Path, example: Path, timeout_s: float, discrepancy_rate: float, admin_port: int
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    text = example.read_text()
    first = True

    def port(match: re.Match[str]) -> str:
        nonlocal first
        # The first `port =` in the example is [admin]'s; the rest are the networks'.
        chosen = admin_port if first else 0
        first = False
        return f"port = {chosen}"

    config = base / "channels.toml"
    # The settlement files go to the work dir, beside the journal they reconcile against.
    text = re.sub(r'^out_dir = ".*"$', f'out_dir = "{base / "settlement"}"', text, flags=re.M)
    text = re.sub(
        r"^discrepancy_rate = .*$", f"discrepancy_rate = {discrepancy_rate}", text, flags=re.M
    )
    config.write_text(_PORT_LINE.sub(port, text))
    return _launch_channels(base, config, timeout_s, admin_port)


def restart_channels(base: Path, ready: dict[str, Any], timeout_s: float = 30.0
                     ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start the simulators of :func:`start_channels` again (after they stopped or were
    killed) on the networks' ports they had, so a running switch's adapters reconnect to
    them. The admin API keeps its port too when it is still free; another process may
    have taken it meanwhile (in a parallel test run, another run's simulators take 7280
    as soon as it is free), and no switch connects to it: then it takes a free one, and
    the returned ``admin_port`` says which."""
    config = base / "channels.toml"
    _pin_channel_ports(config, ready, int(ready["admin_port"]))
    try:
        return _launch_channels(base, config, timeout_s, int(ready["admin_port"]))
    except PortTaken as taken:
        if "admin.port" not in str(taken):
            raise
    _pin_channel_ports(config, ready, 0)
    return _launch_channels(base, config, timeout_s, 0)


def _pin_channel_ports(config: Path, ready: dict[str, Any], admin_port: int) -> None:
    """Rewrite ``config``'s ports: the networks' to those in ``ready``, the admin API's
    to ``admin_port`` (0: a free one)."""
    table, network = "", ""
    lines: list[str] = []
    for line in config.read_text().splitlines():
        if line.startswith("["):
            table = line.split("#", 1)[0].strip()
        elif table == "[[networks]]" and line.startswith("name ="):
            network = line.split("=", 1)[1].split("#", 1)[0].strip().strip('"')
        elif _PORT_LINE.match(line) and table in ("[admin]", "[[networks]]"):
            pinned = admin_port if table == "[admin]" else ready[network]["port"]
            line = _PORT_LINE.sub(f"port = {pinned}", line)
        lines.append(line)
    config.write_text("\n".join(lines) + "\n")


def _launch_channels(base: Path, config: Path, timeout_s: float, admin_port: int
                     ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ready = base / "channels-ready.json"
    ready.unlink(missing_ok=True)
    ensure_demo_tokens()  # admin tokens in the environment the simulators inherit
    log_path = base / "channels.log"
    log_file = log_path.open("ab")
    logged_before = log_path.stat().st_size
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "channels",
            "serve",
            "--config",
            str(config),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        start_new_session=True,  # stopped by the parent, after the switch (see start_switch)
    )
    log_file.close()
    deadline = time.monotonic() + timeout_s  # wall clock: waiting on another process
    while not ready.exists():
        if proc.poll() is not None:
            err = log_path.read_bytes()[logged_before:].decode(errors="replace")
            if admin_port and "address already in use" in err:
                raise PortTaken(err)
            raise RuntimeError(f"channels exited: {err[-3000:]}")
        if time.monotonic() > deadline:  # wall clock: another process
            proc.kill()
            raise RuntimeError("channels did not become ready in time")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def channel_networks_toml(ready: dict[str, Any], routes: bool = True,
                          timeout_s: float | None = None) -> str:
    """Switch config for the running simulators: one adapter each, and (unless a route
    table is used instead) one route per channel, to each channel's primary network, with
    ``timeout_s`` per attempt (None: the default)."""
    lines = []
    for name, info in sorted(ready.items()):
        if name == "admin_port":
            continue
        lines += [
            "[[channel_networks]]",
            f'kind = "{info["kind"]}"',
            f'name = "{name}"',
            f"port = {info['port']}",
            "",
        ]
    if routes:
        primary = {"card": "card-primary", "swift": "swift", "qr": "qr"}
        for channel, network in primary.items():
            lines += ["[[routes]]", f'channel = "{channel}"', f'network = "{network}"']
            lines += [f"timeout_s = {timeout_s}", ""] if timeout_s is not None else [""]
    return "\n".join(lines)
