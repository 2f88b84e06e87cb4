"""Write one named section of bench/RESULTS.md, leaving the other sections alone.

Every benchmark script owns one section (between ``<!-- section: NAME -->`` markers), so
scripts can be re-run independently and the file stays a single, current report. Each
section carries the machine it was measured on, because figures from a noisy 2-core box
mean nothing without it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\n"
    "Written by the scripts under bench/; each section names the script that owns it.\n"
    "Machines here are noisy (±20%): compare rows measured side by side in one run, and\n"
    "read ratios rather than absolute figures.\n"
)


def machine_info() -> str:
    """One line describing where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} cores; Python {sys.version.split()[0]}; "
        f"{platform.system()} {platform.release()}; "
        f"measured {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_flag(parser: argparse.ArgumentParser | None = None) -> bool:
    """``--write``: whether this run may update bench/RESULTS.md (a tracked file).

    With ``parser``, adds the option to it (the caller parses); without, parses argv alone.
    """
    if parser is not None:
        parser.add_argument("--write", action="store_true",
                            help="record the results in bench/RESULTS.md (tracked in git)")
        return False
    own = argparse.ArgumentParser(description="(benchmark)")
    write_flag(own)
    return bool(own.parse_args().write)


def write_section(name: str, title: str, body: str, script: str, write: bool) -> None:
    """Replace (or append) section ``name`` in bench/RESULTS.md, only when ``write``.

    Without it the file is left alone and a line says how to record the results: running
    a benchmark to look at it must not dirty a tracked file.
    """
    if not write:
        print(f"(bench/RESULTS.md not changed: run `{script} --write` to record these results)")
        return
    start, end = f"<!-- section: {name} -->", f"<!-- end: {name} -->"
    block = (
        f"{start}\n## {title}\n\n_Script: `{script}` — {machine_info()}_\n\n{body.rstrip()}\n{end}"
    )
    text = RESULTS_PATH.read_text() if RESULTS_PATH.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS_PATH.write_text(text)
