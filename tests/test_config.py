"""Bad configuration stops start-up with the key path; the example config loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from switch.serve.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[journal]\nmode = "fast"', "journal.mode: Invalid enum value 'fast'"),
        ("[server]\nport = 70000", "server.port: Expected `int` <= 65535"),
        ('[server]\nport = "x"', "server.port: Expected `int`, got `str`"),
        ("[server]\nfoo = 1", "server.foo: unknown key"),
        ("[surver]\nport = 1", "surver: unknown key"),
        ("[server]\nmax_frame_bytes = 1", "server.max_frame_bytes: Expected `int` >= 256"),
        (
            '[[risk.amount_limits]]\nchannel = "card"\ncurrency = "XXX"\nmax_minor = 5',
            "risk.amount_limits[0].currency: unknown currency 'XXX'",
        ),
        (
            '[[networks]]\nname = "a"\nchannel = "card"\n'
            '[[routes]]\nchannel = "card"\nnetwork = "b"',
            "routes[0].network: no network named 'b'",
        ),
        ("server = [", "not valid TOML"),
        ('[journal]\nwriter = "disk"', "journal.writer: Invalid enum value 'disk'"),
        ("[journal]\ncommit_window_s = 0.002",
         'journal.commit_window_s: a commit window needs journal.writer = "thread"'),
    ],
)
def test_bad_config_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "switch.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("switch.toml")


def test_a_commit_window_loads_with_the_thread_writer() -> None:
    cfg = parse_config('[journal]\nwriter = "thread"\ncommit_window_s = 0.002', "switch.toml")
    assert cfg.journal.writer == "thread" and cfg.journal.commit_window_s == 0.002
    assert parse_config("", "switch.toml").journal.writer == "loop"  # the default


def test_example_config_loads() -> None:
    config = load_config(ROOT / "examples" / "switch.toml")
    assert {r.channel for r in config.routes} == {"card", "swift", "qr"}


def test_serve_refuses_bad_config_with_the_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[journal]\nmode = 'fast'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "switch.cli.main", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "journal.mode" in proc.stderr
