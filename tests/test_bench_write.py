"""Benchmarks change the tracked bench/RESULTS.md only when asked to (--write)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench import results

ROOT = Path(__file__).resolve().parents[1]


def test_write_section_leaves_the_file_alone_without_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "RESULTS.md"
    target.write_text("# Benchmark results\n")
    monkeypatch.setattr(results, "RESULTS_PATH", target)
    results.write_section("codecs", "Codecs", "| a |", "bench/bench_codecs.py", write=False)
    assert target.read_text() == "# Benchmark results\n"
    assert "run `bench/bench_codecs.py --write` to record" in capsys.readouterr().out
    results.write_section("codecs", "Codecs", "| a |", "bench/bench_codecs.py", write=True)
    assert "<!-- section: codecs -->" in target.read_text()


def test_every_bench_script_passes_its_write_flag() -> None:
    """No script calls write_section without the flag (the argument is required)."""
    calls = 0
    for path in [*ROOT.glob("bench/*.py"), *ROOT.glob("bench/*/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "write_section":
                calls += 1
                assert len(node.args) + len(node.keywords) == 5, path
    assert calls >= 7
