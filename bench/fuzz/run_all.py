"""Coverage-guided fuzzing (atheris/libFuzzer) of every decoder, each for a bounded time.

    python bench/fuzz/run_all.py --seconds 120 [--only wire iso8583] [--write]

Discovers every ``bench/fuzz/fuzz_*.py``: a target module exposes ``TestOneInput(data:
bytes)`` (which catches the codec's declared error itself, so anything escaping it is
undeclared) and optionally ``seeds() -> list[bytes]`` (valid messages to start from).
Each target runs in its own subprocess (atheris instruments the modules that target
imports), niced, for ``--seconds``. The child keeps going after an undeclared exception:
it records one finding per distinct (exception type, innermost line), saves the first
input of each under ``--artifacts``, and at the deadline prints its totals as JSON. A
child that dies (libFuzzer timeout, out of memory, a crash in C) counts as a finding too.

Prints a table (target, executions, executions/s, coverage, findings) and exits 1 if any
target had a finding. ``--write`` puts the table in bench/RESULTS.md (section ``fuzz``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SUMMARY_PREFIX = "FUZZ-SUMMARY "
#: Input size ceiling: above every codec's own bound check is not needed to reach them.
MAX_LEN = 16384


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("fuzz_"): p for p in sorted(HERE.glob("fuzz_*.py"))}


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fuzz_target_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: cannot load")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "TestOneInput", None)):
        raise SystemExit(f"{path}: no TestOneInput(data: bytes)")
    return module


def child(path: Path, seconds: float, corpus: Path, artifacts: Path) -> None:
    """Runs inside the subprocess: instrument, seed, fuzz until the deadline."""
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports():
        module = _load(path)
    seeds: list[bytes] = list(module.seeds()) if hasattr(module, "seeds") else []
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    target = module.TestOneInput
    findings: dict[str, dict[str, Any]] = {}
    state = {"runs": 0}
    started = time.monotonic()
    deadline = started + seconds

    def report() -> None:
        elapsed = time.monotonic() - started
        print(SUMMARY_PREFIX + json.dumps({
            "executions": state["runs"], "seconds": round(elapsed, 1),
            "findings": list(findings.values())}), flush=True)

    def one(data: bytes) -> None:
        state["runs"] += 1
        if state["runs"] & 0x3FF == 0 and time.monotonic() >= deadline:
            report()
            os._exit(0)
        try:
            target(data)
        except Exception as exc:  # undeclared: TestOneInput handled the declared ones
            tb = traceback.extract_tb(exc.__traceback__)
            where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
            key = f"{type(exc).__name__} at {where}"
            if key not in findings:
                sample = artifacts / f"finding-{len(findings)}"
                sample.write_bytes(data)
                findings[key] = {"finding": key, "message": str(exc)[:200],
                                 "input": str(sample)}
                print(f"FINDING {key}: {str(exc)[:200]}", file=sys.stderr, flush=True)

    atheris.Setup([sys.argv[0], str(corpus), f"-max_len={MAX_LEN}", "-timeout=10",
                   "-rss_limit_mb=2048", f"-max_total_time={int(seconds) + 60}",
                   f"-artifact_prefix={artifacts}/", "-print_final_stats=0"], one)
    atheris.Fuzz()
    report()


def run_target(name: str, path: Path, seconds: float, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path),
           "--seconds", str(seconds), "--corpus", str(work / name / "corpus"),
           "--artifacts", str(work / name / "artifacts")]
    started = time.monotonic()
    proc = subprocess.run(["nice", "-n", "15", *cmd], cwd=ROOT, capture_output=True,
                          text=True, timeout=seconds + 300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    summary: dict[str, Any] | None = None
    for line in proc.stdout.splitlines():
        if line.startswith(SUMMARY_PREFIX):
            summary = json.loads(line[len(SUMMARY_PREFIX):])
    cov = ""
    for line in proc.stderr.splitlines():
        if " cov: " in line:
            parts = line.split()
            if "cov:" in parts:
                cov = parts[parts.index("cov:") + 1]
    if summary is None:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        summary = {"executions": 0, "seconds": round(time.monotonic() - started, 1),
                   "findings": [{"finding": f"child exited {proc.returncode}",
                                 "message": tail[:300], "input": str(work / name / "artifacts")}]}
    summary["coverage"] = cov
    summary["target"] = name
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per target")
    parser.add_argument("--only", nargs="*", default=None, help="target names (fuzz_NAME.py)")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    parser.add_argument("--work", default=None, help="corpora and findings (default: temp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 86_400:
        parser.error(f"--seconds must be in 1..86400, got {args.seconds:g}")
    if args.child is not None:
        child(Path(args.child), args.seconds, Path(args.corpus), Path(args.artifacts))
        return 0
    targets = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(targets))
        if unknown:
            parser.error(f"--only: no bench/fuzz/fuzz_{unknown[0]}.py "
                         f"(targets: {', '.join(targets)})")
        targets = {name: targets[name] for name in args.only}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="payswitch-fuzz-"))
    results = []
    for name, path in targets.items():
        result = run_target(name, path, args.seconds, work)
        results.append(result)
        rate = result["executions"] / max(result["seconds"], 1e-9)
        print(f"{name:16} {result['executions']:>11,} runs {rate:>9,.0f}/s "
              f"cov {result['coverage']:>6} findings {len(result['findings'])}", flush=True)
        for finding in result["findings"]:
            print(f"    {finding['finding']}: {finding['message']} ({finding['input']})")
    print(f"corpora and findings in {work}")
    if args.write:
        _write(results)
    return 1 if any(r["findings"] for r in results) else 0


def _write(results: list[dict[str, Any]]) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.results import markdown_table, write_section

    rows: list[tuple[object, ...]] = [
        (r["target"], f"{r['executions']:,}", f"{r['seconds']:.0f}",
         f"{r['executions'] / max(r['seconds'], 1e-9):,.0f}", r["coverage"] or "-",
         len(r["findings"]) or "0", "; ".join(f["finding"] for f in r["findings"]) or "-")
        for r in results]
    # Keep the rows of targets this run did not include (``--only``): one table, current.
    ran = {r["target"] for r in results}
    rows += [row for row in _previous_rows() if row[0] not in ran]
    rows.sort(key=lambda row: str(row[0]))
    body = (
        "Each target under atheris (libFuzzer, coverage-guided), niced, "
        "seeded with valid messages. A finding is any exception other than the codec's "
        "declared error (CodecError; for the wire decoder: none, it answers ErrorReply), "
        "or a child that died.\n\n"
        + markdown_table(["target", "executions", "seconds", "exec/s", "coverage edges",
                          "findings", "what"], rows)
        + "\n"
    )
    write_section("fuzz", "Coverage-guided fuzzing of the decoders", body,
                  "bench/fuzz/run_all.py", write=True)  # only reached with --write


def _previous_rows() -> list[tuple[str, ...]]:
    """The table rows of the ``fuzz`` section already in bench/RESULTS.md."""
    from bench.results import RESULTS_PATH

    if not RESULTS_PATH.exists():
        return []
    text = RESULTS_PATH.read_text()
    start, end = text.find("<!-- section: fuzz -->"), text.find("<!-- end: fuzz -->")
    if start < 0 or end < 0:
        return []
    rows: list[tuple[str, ...]] = []
    for line in text[start:end].splitlines():
        cells = tuple(cell.strip() for cell in line.strip().strip("|").split("|"))
        if line.startswith("| ") and len(cells) == 7 and cells[0] != "target":
            rows.append(cells)
    return rows


if __name__ == "__main__":
    sys.exit(main())
