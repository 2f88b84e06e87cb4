"""The README's setup: the default workload against examples/channels.toml.

Every BIC the default workload can put on a SWIFT payment must be a bank of the example
SWIFT network; otherwise that corridor's payments all decline 57 (RJCT AG01), which reads
as a network problem in a load test that is really a configuration mismatch.
"""

from __future__ import annotations

from pathlib import Path

from channels.config import load_config
from loadtests.harness.workload import SpecWorkload, WorkloadSpec

ROOT = Path(__file__).resolve().parents[2]


def example_banks() -> set[str]:
    config = load_config(ROOT / "examples" / "channels.toml")
    banks = {bank.bic for net in config.networks if net.kind == "swift" and net.swift
             for bank in net.swift.banks}
    assert banks, "examples/channels.toml has no SWIFT banks"
    return banks


def drawn_bics(seeds: range, draws: int) -> set[str]:
    bics: set[str] = set()
    for seed in seeds:
        workload = SpecWorkload(WorkloadSpec(), seed)
        for _ in range(draws):
            request, _ = workload.next()
            if request.swift is not None:
                bics |= {request.swift.debtor_agent, request.swift.creditor_agent}
    return bics


def test_every_bic_the_default_workload_draws_is_an_example_bank() -> None:
    declared = {bic for c in WorkloadSpec().corridors for bic in (c.debtor_bic, c.creditor_bic)}
    drawn = drawn_bics(range(3), 2000)
    assert drawn == declared  # the draws cover every corridor (and nothing else)
    assert drawn - example_banks() == set()


def test_the_check_notices_a_missing_bank() -> None:
    banks = example_banks() - {"HSBCGB2L"}
    assert drawn_bics(range(1), 2000) - banks == {"HSBCGB2L"}


def test_the_simulators_default_banks_cover_the_default_workload_too() -> None:
    from channels.config import SwiftSpec

    assert drawn_bics(range(1), 2000) - {bank.bic for bank in SwiftSpec().banks} == set()
