"""Fuzz target: the camt053 settlement file reader (what `payswitch reconcile` runs).

Atheris convention: ``TestOneInput(data: bytes)``. Any exception other than
SettlementFileError is a finding (so is an AssertionError from the checks below).
Run alone: ``.venv/bin/python bench/fuzz/fuzz_settlement_camt053.py -max_total_time=60``
(needs atheris); bench/fuzz/run_all.py discovers every fuzz_*.py.
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from switch.protocols.settlement_files import SettlementFileError, read_camt053_columns


def TestOneInput(data: bytes) -> None:
    try:
        cols = read_camt053_columns(data, "s.xml")
    except SettlementFileError:
        return
    assert len(cols.reference) == len(cols.amount) == len(cols.time_us)


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
