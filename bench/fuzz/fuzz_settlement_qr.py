"""Fuzz target: the qr settlement file reader (what `payswitch reconcile` runs).

Atheris convention: ``TestOneInput(data: bytes)``. Any exception other than
SettlementFileError is a finding (so is an AssertionError from the checks below).
Run alone: ``.venv/bin/python bench/fuzz/fuzz_settlement_qr.py -max_total_time=60``
(needs atheris); bench/fuzz/run_all.py discovers every fuzz_*.py.
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.fuzz.settlement_differential import check
from switch.currency import CURRENCIES
from switch.protocols.settlement_files import decode_qr_csv, read_qr_csv_columns


def TestOneInput(data: bytes) -> None:
    check(data, "csv", read_qr_csv_columns,
          lambda text, name: decode_qr_csv(text, name, CURRENCIES))


def main() -> None:
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
