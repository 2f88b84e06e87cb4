"""The workload model: TOML validation names the key path; draws follow the spec, seeded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec
import pytest

from loadtests.harness.workload import (
    SpecWorkload,
    Workload,
    WorkloadError,
    WorkloadSpec,
    ZipfSampler,
    derive_seed,
    load_workload,
    parse_workload,
)
from switch import reasons
from switch.model import CHANNELS
from switch.payment.validation import InvalidPayment, validate
from switch.protocols.wire import ErrorReply, decode_request

WORKLOADS = Path(__file__).resolve().parents[2] / "loadtests" / "workloads"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[channels.card]\nweigth = 1\n", "channels.card.weigth: unknown key"),
        ("colour = 1\n", "colour: unknown key"),
        (
            '[[channels.swift.amounts]]\ncurrency = "EUR"\nmedian_minor = -5\n',
            "channels.swift.amounts[0].median_minor: Expected `int` >= 1",
        ),
        (
            '[[channels.card.amounts]]\ncurrency = "XYZ"\nmedian_minor = 5\n',
            "channels.card.amounts[0].currency: unknown currency 'XYZ'",
        ),
        ("[hot_keys.cards]\npool = 0\n", "hot_keys.cards.pool: Expected `int` >= 1"),
        ("[hot_keys.merchants]\npool = 10\nexponent = -1\n", "hot_keys.merchants.exponent"),
        ("[shares]\nduplicate = 1.5\n", "shares.duplicate: Expected `float` <= 1"),
        ("[shares]\nduplicate = 0.6\ninvalid = 0.6\n", "shares: the shares add up to 1.2"),
        (
            '[[corridors]]\ndebtor_bic = "DEUTDEFF"\ncreditor_bic = "BNPAFRPP"\n'
            'currency = "EUR"\n[[corridors]]\ndebtor_bic = "not a bic"\n'
            'creditor_bic = "BNPAFRPP"\ncurrency = "EUR"\n',
            "corridors[1].debtor_bic: not a BIC",
        ),
        (
            '[[corridors]]\ndebtor_bic = "DEUTDEFF"\ncreditor_bic = "BNPAFRPP"\n'
            'currency = "GBP"\n',
            "corridors[0].currency: no amount distribution for 'GBP'",
        ),
        (
            "[channels.card]\nweight = 0\n[channels.swift]\nweight = 0\n"
            "[channels.qr]\nweight = 0\n",
            "channels: every channel weight is 0",
        ),
        (
            '[[risk.over_limit]]\nchannel = "atm"\ncurrency = "USD"\namount_minor = 5\n',
            "risk.over_limit[0].channel: Invalid enum value 'atm'",
        ),
        (
            "[risk]\nblocked_accounts = []\n[shares]\nblocklisted = 0.1\n",
            "risk.blocked_accounts: shares.blocklisted > 0 needs at least one account",
        ),
        ("seed = \n", "not valid TOML"),
    ],
)
def test_errors_name_the_key_path(text: str, message: str) -> None:
    with pytest.raises(WorkloadError) as info:
        parse_workload(text, "w.toml")
    assert str(info.value).startswith("w.toml: ")
    assert message in str(info.value)


def test_shipped_workloads_load_and_default_file_matches_the_code() -> None:
    for path in sorted(WORKLOADS.glob("*.toml")):
        load_workload(path)
    written, built_in = load_workload(WORKLOADS / "default.toml"), WorkloadSpec()
    assert written.shares == built_in.shares
    assert written.hot_keys == built_in.hot_keys
    assert written.corridors == built_in.corridors
    assert written.risk == built_in.risk
    assert written.channel_shares() == built_in.channel_shares()
    for channel in CHANNELS:
        assert written.amounts(channel) == built_in.amounts(channel)


def test_missing_file_is_a_workload_error(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="cannot read"):
        load_workload(tmp_path / "nope.toml")


def _draw(spec: WorkloadSpec, seed: int, n: int) -> list[tuple[bytes, str]]:
    workload = SpecWorkload(spec, seed, key_prefix="t-")
    out = []
    for _ in range(n):
        item, kind = workload.next_item()
        out.append((item if isinstance(item, bytes) else msgspec.msgpack.encode(item), kind))
    return out


def test_same_seed_same_sequence_other_seed_differs() -> None:
    spec = WorkloadSpec()
    assert _draw(spec, 5, 500) == _draw(spec, 5, 500)
    assert _draw(spec, 5, 500) != _draw(spec, 6, 500)
    assert derive_seed(1, "process", 0) != derive_seed(1, "process", 1)
    assert derive_seed(1, "process", 0) == derive_seed(1, "process", 0)


def test_mix_shares_and_amounts_follow_the_spec() -> None:
    spec = parse_workload(
        """
[channels.card]
weight = 2
amounts = [{ currency = "USD", median_minor = 10000, sigma = 0.5 }]
[channels.swift]
weight = 1
[channels.qr]
weight = 1
[shares]
duplicate = 0.05
malformed = 0.02
invalid = 0.03
over_limit = 0.04
blocklisted = 0.05
"""
    )
    workload = SpecWorkload(spec, 42, key_prefix="m-")
    n = 40_000
    kinds: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    card_amounts: list[int] = []
    for _ in range(n):
        item, kind = workload.next_item()
        kinds[kind] += 1
        if isinstance(item, bytes):
            assert isinstance(decode_request(item), ErrorReply)
            assert decode_request(item).code == reasons.E_MALFORMED  # type: ignore[union-attr]
            continue
        if kind == "new":
            channels[item.channel] += 1
            if item.channel == "card":
                card_amounts.append(item.amount)
        if kind == "invalid":
            with pytest.raises(InvalidPayment):
                validate(item)
        else:
            validate(item)
        if kind == "over_limit":
            assert (item.channel, item.currency, item.amount) == ("card", "USD", 2_000_000)
        if kind == "blocklisted":
            assert item.payer.account == "ACCT-BLOCKED-1"
        if item.channel == "swift" and kind == "new":
            assert item.swift is not None
            corridor = (item.swift.debtor_agent, item.swift.creditor_agent, item.currency)
            assert corridor in {(c.debtor_bic, c.creditor_bic, c.currency) for c in spec.corridors}
    for kind, share in [("duplicate", 0.05), ("malformed", 0.02), ("invalid", 0.03),
                        ("over_limit", 0.04), ("blocklisted", 0.05)]:
        assert abs(kinds[kind] / n - share) < 0.006, (kind, kinds[kind])
    new = sum(channels.values())
    assert abs(channels["card"] / new - 0.5) < 0.02
    assert abs(channels["swift"] / new - 0.25) < 0.02
    card_amounts.sort()
    median = card_amounts[len(card_amounts) // 2]
    assert 9_000 < median < 11_000


def test_zipf_pools_are_skewed_as_specified() -> None:
    sampler = ZipfSampler(1000, 1.2)
    import random

    rng = random.Random(3)
    n = 50_000
    counts = Counter(sampler.rank(rng.random()) for _ in range(n))
    assert abs(counts[0] / n - sampler.probability(0)) < 0.01
    assert counts[0] > counts[1] > counts[9]
    uniform = ZipfSampler(10, 0.0)
    assert all(abs(uniform.probability(k) - 0.1) < 1e-12 for k in range(10))


def test_per_channel_draws_for_locust_users() -> None:
    workload = SpecWorkload(WorkloadSpec(), 9, key_prefix="c-")
    for _ in range(2000):
        item, kind = workload.next_item("qr")
        if isinstance(item, bytes) or kind == "invalid":
            continue
        assert item.channel == "qr", kind


def test_keys_are_unique_and_within_the_protocol_limit() -> None:
    workload = SpecWorkload(WorkloadSpec(), 1, key_prefix="Labc123p63-")
    keys = set()
    for _ in range(5000):
        item, kind = workload.next_item()
        if isinstance(item, bytes) or kind == "duplicate":
            continue
        assert len(item.idempotency_key) <= 64
        assert item.idempotency_key not in keys
        keys.add(item.idempotency_key)


def test_the_demo_workload_api_still_works() -> None:
    workload = Workload(42)
    kinds = Counter(workload.next()[1] for _ in range(3000))
    assert set(kinds) <= {"new", "duplicate", "invalid"}
    assert kinds["new"] > 2800
