"""Review: `payswitch cluster haproxy-config` refusing a layout leaves nothing behind.

It used to create ``<out>-errors/`` (and the 503 files in it, and the directory of
``--out``) before checking the layout, so a refused run left a half-written errors
directory beside a config that was never written."""

from __future__ import annotations

from pathlib import Path

import pytest

from switch.cluster.haproxy import write_config
from switch.cluster.layout import load_layout
from tests.cluster.test_cluster_cli import layout
from tests.test_cli_errors import one_error_line, run


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_layout_without_http_ports_is_refused_with_nothing_written(tmp_path: Path) -> None:
    no_http = layout(tmp_path, http=False)
    before = _files(tmp_path)
    line = one_error_line(run("cluster", "haproxy-config", "--layout", str(no_http),
                              "--out", str(tmp_path / "out" / "h.cfg")))
    assert "have no http_port" in line
    assert _files(tmp_path) == before  # no h-errors/, no out/, no h.cfg


def test_a_missing_iso8583_port_is_refused_with_nothing_written(tmp_path: Path) -> None:
    spec = layout(tmp_path)  # HTTP doors, but no ISO 8583 door
    before = _files(tmp_path)
    with pytest.raises(ValueError, match="have no iso8583_port"):
        write_config(load_layout(spec), tmp_path / "h.cfg", bind="127.0.0.1:8080",
                     iso8583_bind="127.0.0.1:8583")
    assert _files(tmp_path) == before


def test_an_accepted_layout_still_writes_the_config_and_its_errors_dir(tmp_path: Path) -> None:
    spec = load_layout(layout(tmp_path, shards=2))
    out = write_config(spec, tmp_path / "new" / "h.cfg", bind="127.0.0.1:8080")
    assert out == (tmp_path / "new" / "h.cfg").resolve()
    errors = tmp_path / "new" / "h-errors"
    assert sorted(p.name for p in errors.iterdir()) == ["shard-0-503.http", "shard-1-503.http"]
    assert f"errorfile 503 {errors.resolve() / 'shard-1-503.http'}" in out.read_text()
