"""Fault model: each kind's effect, windows, scoping, flapping, validation and bounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.faults import (
    MAX_COMBINED_FACTOR,
    MAX_FAULTS,
    NO_FAULTS,
    ActiveFaults,
    Fault,
    FaultConfigError,
    FaultConflictError,
    FaultTimeline,
    TooManyFaultsError,
    convert_faults,
    decode_faults_json,
    validate_fault_schedule,
)

EP = "issuer-a"


def timeline(*faults: Fault, origin: float = 0.0) -> FaultTimeline:
    return FaultTimeline(faults, origin=origin)


# --- each kind's effect -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault(kind="down", endpoint=EP), ActiveFaults(is_down=True)),
        (Fault(kind="blackhole", endpoint=EP), ActiveFaults(is_blackhole=True)),
        (Fault(kind="slow", endpoint=EP, factor=4), ActiveFaults(latency_factor=4.0)),
        (Fault(kind="error_burst", endpoint=EP, rate=0.3), ActiveFaults(error_rate=0.3)),
        (Fault(kind="reset", endpoint=EP, rate=0.2), ActiveFaults(reset_rate=0.2)),
        (Fault(kind="malformed", endpoint=EP, rate=0.1), ActiveFaults(malformed_rate=0.1)),
        (Fault(kind="duplicate", endpoint=EP, rate=0.5), ActiveFaults(duplicate_rate=0.5)),
        (
            Fault(kind="late", endpoint=EP, rate=0.25, delay_s=30),
            ActiveFaults(late_rate=0.25, late_delay_s=30.0),
        ),
        (
            Fault(kind="partial", endpoint=EP, match=("4111",)),
            ActiveFaults(unavailable=True),
        ),
        (
            Fault(kind="flapping", endpoint=EP, period_s=10, start_down=True),
            ActiveFaults(is_down=True),
        ),
    ],
    ids=lambda value: value.kind if isinstance(value, Fault) else "",
)
def test_each_kind_has_its_effect(fault: Fault, expected: ActiveFaults) -> None:
    faults = timeline(fault)
    assert faults.active(EP, 1.0, route_key="41110000") == expected
    assert faults.active("issuer-b", 1.0, route_key="41110000") is NO_FAULTS


def test_healthy_endpoint_answers_shared_constant() -> None:
    assert timeline().active(EP, 0.0) is NO_FAULTS
    assert NO_FAULTS.is_clear
    assert not ActiveFaults(is_down=True).is_clear


# --- windows ------------------------------------------------------------------------------------


def test_window_opens_and_closes_relative_to_origin() -> None:
    faults = timeline(Fault(kind="down", endpoint=EP, start_s=10, duration_s=5), origin=100.0)
    assert not faults.active(EP, 109.999).is_down
    assert faults.active(EP, 110.0).is_down
    assert faults.active(EP, 114.999).is_down
    assert not faults.active(EP, 115.0).is_down  # [begin, end): closed at the end instant


def test_no_duration_lasts_until_cleared() -> None:
    faults = timeline(Fault(kind="blackhole", endpoint=EP))
    assert faults.active(EP, 1e6).is_blackhole
    (status,) = faults.describe(1e6)
    assert status.remaining_s is None
    assert faults.clear(status.id)
    assert faults.active(EP, 1e6) is NO_FAULTS
    assert not faults.clear(status.id)


def test_inject_starts_at_now_and_clear_by_endpoint() -> None:
    faults = timeline(Fault(kind="slow", endpoint=EP, factor=2, start_s=100))
    fault_id = faults.inject(Fault(kind="error_burst", endpoint=EP, rate=0.5, duration_s=3), 50.0)
    assert faults.active(EP, 49.9) is NO_FAULTS
    assert faults.active(EP, 50.0).error_rate == 0.5
    assert faults.active(EP, 53.0) is NO_FAULTS
    assert len(faults) == 2
    removed = faults.clear_endpoint(EP)
    assert fault_id in removed and len(removed) == 2  # the scheduled one goes too
    assert faults.active(EP, 150.0) is NO_FAULTS
    assert faults.clear_endpoint(EP) == []


def test_describe_lists_active_faults_with_remaining_time() -> None:
    faults = timeline(
        Fault(kind="slow", endpoint=EP, factor=3, duration_s=60),
        Fault(kind="flapping", endpoint="issuer-b", period_s=20, start_s=5),
        Fault(kind="down", endpoint="issuer-c", start_s=1000),
    )
    statuses = faults.describe(10.0)
    assert [(s.kind, s.endpoint) for s in statuses] == [("slow", EP), ("flapping", "issuer-b")]
    assert statuses[0].remaining_s == pytest.approx(50.0)
    assert statuses[0].detail == "factor=3"
    assert statuses[1].detail == "period_s=20, up phase"
    assert faults.describe(16.0)[1].detail == "period_s=20, down phase"


def test_prune_drops_only_closed_windows() -> None:
    faults = timeline(
        Fault(kind="down", endpoint=EP, duration_s=1),
        Fault(kind="slow", endpoint=EP, factor=2, start_s=5),
    )
    assert faults.prune(1.0) == 1
    assert len(faults) == 1


# --- partial scoping ----------------------------------------------------------------------------


def test_match_applies_only_to_route_keys_with_a_listed_prefix() -> None:
    faults = timeline(
        Fault(kind="error_burst", endpoint=EP, rate=1.0, match=("4111", "55")),
        Fault(kind="slow", endpoint=EP, factor=2),
    )
    assert faults.active(EP, 0, "4111111111111111").error_rate == 1.0
    assert faults.active(EP, 0, "5500000000000004").error_rate == 1.0
    assert faults.active(EP, 0, "4000000000000002").error_rate == 0.0
    assert faults.active(EP, 0, "411").error_rate == 0.0  # shorter than the prefix
    # A connection-level question (no key) sees only endpoint-wide faults.
    assert faults.active(EP, 0) == ActiveFaults(latency_factor=2.0)


def test_scoped_down_leaves_other_keys_and_connections_up() -> None:
    faults = timeline(Fault(kind="down", endpoint=EP, match=("GBP:",)))
    assert faults.active(EP, 0, "GBP:EUR").is_down
    assert not faults.active(EP, 0, "USD:EUR").is_down
    assert not faults.active(EP, 0).is_down


# --- flapping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("start_down", [False, True])
def test_flapping_alternates_half_periods(start_down: bool) -> None:
    faults = timeline(
        Fault(kind="flapping", endpoint=EP, start_s=100, period_s=10, start_down=start_down,
              duration_s=30),
        origin=0.0,
    )
    first_half = [faults.active(EP, t).is_down for t in (100.0, 104.99)]
    second_half = [faults.active(EP, t).is_down for t in (105.0, 109.99)]
    third_half = [faults.active(EP, t).is_down for t in (110.0, 114.99)]
    assert first_half == [start_down] * 2
    assert second_half == [not start_down] * 2
    assert third_half == [start_down] * 2
    assert not faults.active(EP, 99.0).is_down and not faults.active(EP, 130.0).is_down


# --- combination --------------------------------------------------------------------------------


def test_overlapping_compatible_faults_combine() -> None:
    faults = timeline(
        Fault(kind="slow", endpoint=EP, factor=2),
        Fault(kind="slow", endpoint=EP, factor=3),
        Fault(kind="error_burst", endpoint=EP, rate=0.2),
        Fault(kind="error_burst", endpoint=EP, rate=0.5),
        Fault(kind="late", endpoint=EP, rate=0.1, delay_s=5),
        Fault(kind="late", endpoint=EP, rate=0.3, delay_s=2),
        Fault(kind="down", endpoint=EP, match=("4",)),  # scoped, so not contradictory
        Fault(kind="blackhole", endpoint=EP, match=("5",)),
    )
    active = faults.active(EP, 0.0, "4000")
    assert active.latency_factor == pytest.approx(6.0)
    assert active.error_rate == 0.5
    assert (active.late_rate, active.late_delay_s) == (0.3, 5.0)
    assert active.is_down and not active.is_blackhole


def test_combined_slow_factor_is_capped() -> None:
    faults = timeline(*[Fault(kind="slow", endpoint=EP, factor=1000) for _ in range(5)])
    assert faults.active(EP, 0.0).latency_factor == MAX_COMBINED_FACTOR


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 20), st.floats(0.1, 20)), max_size=12),
       st.floats(0, 40))
def test_error_rate_is_max_of_open_windows(
    specs: list[tuple[float, float, float]], now: float
) -> None:
    faults = [Fault(kind="error_burst", endpoint=EP, rate=rate, start_s=start, duration_s=length)
              for rate, start, length in specs]
    expected = max((f.rate or 0.0 for f in faults if f.start_s <= now < f.end_s), default=0.0)
    active = FaultTimeline(faults).active(EP, now)
    assert active.error_rate == expected
    assert not (active.is_down or active.is_blackhole or active.unavailable)


# --- validation ---------------------------------------------------------------------------------


def raw(kind: str = "down", **fields: object) -> dict[str, object]:
    return {"kind": kind, "endpoint": EP, **fields}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (raw("error_burst", rate=1.5), "faults[2].rate: must be within [0, 1]"),
        (raw("error_burst", rate=-0.1), "faults[2].rate: must be within [0, 1]"),
        (raw("error_burst"), "faults[2].rate: required for kind 'error_burst'"),
        (raw("late", rate=0.5), "faults[2].delay_s: required for kind 'late'"),
        (raw("slow", factor=0.5), "faults[2].factor: must be within [1, 1000]"),
        (raw("slow"), "faults[2].factor: required for kind 'slow'"),
        (raw(duration_s=-5), "faults[2].duration_s: must be > 0"),
        (raw(start_s=-1), "faults[2].start_s: must be within [0, "),
        (raw("flapping"), "faults[2].period_s: required for kind 'flapping'"),
        (raw("flapping", period_s=0), "faults[2].period_s: must be > 0"),
        (raw("partial"), "faults[2].match: required for kind 'partial'"),
        (raw(match=[]), "faults[2].match: must not be empty"),
        (raw(match=["41", ""]), "faults[2].match[1]: at most 64 prefixes"),
        (raw(factor=2.0), "faults[2].factor: not used by kind 'down'"),
        (raw("slow", factor=2, start_down=True), "faults[2].start_down: not used by kind 'slow'"),
        (raw("dwn"), "faults[2].kind: must be one of: down, blackhole"),
        (raw(rat=0.1), "faults[2]: object contains unknown field `rat`"),
        ({"kind": "down"}, "faults[2].endpoint: required"),
        (raw(duration_s="10"), "faults[2].duration_s: expected `float | null`, got `str`"),
        (raw(rate=math.nan), "faults[2].rate: must be within [0, 1]"),
    ],
)
def test_validation_errors_name_the_field_path(entry: dict[str, object], message: str) -> None:
    schedule = [raw(), raw("slow", factor=2), entry]
    with pytest.raises(FaultConfigError) as caught:
        convert_faults(schedule)
    assert str(caught.value).startswith(message), str(caught.value)
    assert caught.value.path.startswith("faults[2]")


def test_json_decode_reports_paths_under_a_caller_root() -> None:
    data = b'[{"kind": "down", "endpoint": "x"}, {"kind": "reset", "endpoint": "x", "rate": 7}]'
    with pytest.raises(FaultConfigError, match=r"^scenario\.faults\[1\]\.rate: must be within"):
        decode_faults_json(data, root="scenario.faults")
    ok = decode_faults_json(b'[{"kind": "slow", "endpoint": "x", "factor": 2.5}]')
    assert ok == [Fault(kind="slow", endpoint="x", factor=2.5)]


def test_validate_checks_bounds_of_faults_built_in_python() -> None:
    # msgspec does not validate on __init__; validate() must still catch the bound.
    with pytest.raises(FaultConfigError, match=r"^fault\.rate: must be within \[0, 1\]"):
        Fault(kind="reset", endpoint=EP, rate=2.0).validate()
    with pytest.raises(FaultConfigError, match=r"^fault\.endpoint: must be 1\.\.128"):
        Fault(kind="down", endpoint="").validate()
    with pytest.raises(FaultConfigError, match=r"^fault\.factor: required"):
        FaultTimeline().inject(Fault(kind="slow", endpoint=EP), now=0.0)


# --- contradictory overlaps ---------------------------------------------------------------------


def test_contradictory_overlap_is_rejected_with_both_indices() -> None:
    schedule = [
        Fault(kind="slow", endpoint=EP, factor=2),
        Fault(kind="down", endpoint=EP, start_s=0, duration_s=10),
        Fault(kind="error_burst", endpoint=EP, rate=0.1),
        Fault(kind="blackhole", endpoint=EP, start_s=5, duration_s=10),
    ]
    with pytest.raises(FaultConflictError) as caught:
        validate_fault_schedule(schedule)
    assert (caught.value.first, caught.value.second) == (1, 3)
    assert str(caught.value).startswith("faults[3]: contradicts faults[1]: 'down' and 'blackhole'")
    assert "[5, 10)" in str(caught.value)
    with pytest.raises(FaultConflictError):
        FaultTimeline(schedule)


@pytest.mark.parametrize(
    "second",
    [
        Fault(kind="blackhole", endpoint=EP, start_s=10, duration_s=5),  # touches, no overlap
        Fault(kind="blackhole", endpoint="issuer-b"),  # other endpoint
        Fault(kind="blackhole", endpoint=EP, match=("4",)),  # other route keys
        Fault(kind="down", endpoint=EP),  # same kind: redundant, not contradictory
        Fault(kind="slow", endpoint=EP, factor=5),  # compatible kinds
    ],
)
def test_non_contradictory_overlaps_are_accepted(second: Fault) -> None:
    validate_fault_schedule([Fault(kind="down", endpoint=EP, duration_s=10), second])


def test_same_match_in_any_order_is_the_same_scope() -> None:
    schedule = [
        Fault(kind="partial", endpoint=EP, match=("41", "42")),
        Fault(kind="flapping", endpoint=EP, period_s=4, match=("42", "41")),
    ]
    with pytest.raises(FaultConflictError, match=r"faults\[1\]: contradicts faults\[0\]"):
        validate_fault_schedule(schedule)


def test_runtime_injection_rejects_contradiction_with_live_fault() -> None:
    faults = timeline(Fault(kind="down", endpoint=EP, start_s=10, duration_s=10))
    with pytest.raises(FaultConflictError) as caught:
        faults.inject(Fault(kind="blackhole", endpoint=EP, duration_s=15), now=0.0)
    assert caught.value.first == 1  # the id of the scheduled fault
    assert len(faults) == 1
    faults.inject(Fault(kind="blackhole", endpoint=EP, duration_s=10), now=0.0)  # ends as it opens


# --- bounds -------------------------------------------------------------------------------------


def test_schedule_is_bounded() -> None:
    many = [Fault(kind="slow", endpoint=f"e{i}", factor=2) for i in range(MAX_FAULTS + 1)]
    FaultTimeline(many[:MAX_FAULTS])
    with pytest.raises(TooManyFaultsError, match=r"^faults: at most 256 faults \(got 257\)"):
        FaultTimeline(many)


def test_injection_is_bounded_but_expired_faults_do_not_count() -> None:
    faults = FaultTimeline(max_faults=4)
    for index in range(4):
        faults.inject(Fault(kind="slow", endpoint=EP, factor=2, duration_s=index + 1), now=0.0)
    with pytest.raises(TooManyFaultsError):
        faults.inject(Fault(kind="down", endpoint="issuer-b"), now=0.5)
    faults.inject(Fault(kind="down", endpoint="issuer-b"), now=1.0)  # the 1 s fault expired
    assert len(faults) == 4
