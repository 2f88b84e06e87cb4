"""The token key (issue 11, defect 12): never a built-in default, never in a config file.

With no [security] section the switch used ``payswitch-demo-key-change-me`` silently, and
a PAN came back from the journal's token in under a second by trying the PANs of its BIN
and last four.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from switch.serve.config import ConfigError, parse_config, resolve_token_key

KEY = "0123456789abcdef0123456789abcdef"


def config(tmp_path: Path, security: str = "") -> str:
    return f'[journal]\npath = "{tmp_path / "journal.db"}"\n{security}'


def test_a_key_written_in_the_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"security.token_key: a key never lives in a config"):
        parse_config(config(tmp_path, f'[security]\ntoken_key = "{KEY}"\n'), "switch.toml")


def test_no_key_refuses_to_start_naming_both_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_token_key(parse_config(config(tmp_path)), environ={})
    message = str(info.value)
    assert "no token key" in message and "$PAYSWITCH_TOKEN_KEY" in message
    assert "security.token_key_file" in message and "\n" not in message


def test_key_from_the_environment_variable_the_config_names(tmp_path: Path) -> None:
    cfg = parse_config(config(tmp_path, '[security]\ntoken_key_env = "MY_KEY"\n'))
    assert resolve_token_key(cfg, environ={"MY_KEY": KEY}).security.token_key == KEY
    with pytest.raises(ConfigError, match=r"\$MY_KEY"):
        resolve_token_key(cfg, environ={"PAYSWITCH_TOKEN_KEY": KEY})


def test_key_from_a_file_wins_and_errors_name_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    cfg = parse_config(config(tmp_path, f'[security]\ntoken_key_file = "{key_file}"\n'))
    assert resolve_token_key(cfg, environ={"PAYSWITCH_TOKEN_KEY": "x" * 20}).security.token_key \
        == KEY
    key_file.write_text("short")
    with pytest.raises(ConfigError, match=rf"{key_file}.*16\.\.1024 characters, got 5"):
        resolve_token_key(cfg, environ={})
    key_file.unlink()
    with pytest.raises(ConfigError, match=rf"cannot read {key_file}"):
        resolve_token_key(cfg, environ={})


def test_demo_generates_one_random_key_per_work_dir(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    first = resolve_token_key(parse_config(config(a)), demo=True, environ={})
    again = resolve_token_key(parse_config(config(a)), demo=True, environ={})
    other = resolve_token_key(parse_config(config(b)), demo=True, environ={})
    assert first.security.token_key == again.security.token_key  # stable across restarts
    assert first.security.token_key != other.security.token_key
    assert len(first.security.token_key) == 64
    assert stat.S_IMODE((a / "token.key").stat().st_mode) == 0o600


def test_serve_without_a_key_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "switch.toml"
    cfg.write_text(config(tmp_path, "[server]\nport = 0\n[admin]\nport = 0\n"))
    env = {k: v for k, v in os.environ.items() if k != "PAYSWITCH_TOKEN_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "switch.cli.main", "serve", "--config", str(cfg),
         "--ready-file", str(tmp_path / "ready.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("serve started without a token key")
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no token key" in lines[0], err
    assert not (tmp_path / "ready.json").exists()
