"""The loop-thread metrics expose exactly what prometheus-client's own would."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from switch.observability.loopmetrics import LoopCounter, LoopHistogram
from switch.observability.metrics import LATENCY_BUCKETS, SwitchMetrics

LABELS = ("card", "swift", "qr")

#: An operation: (which metric, label index, amount, with an exemplar).
operations = st.lists(st.tuples(
    st.sampled_from(["counter", "plain", "histogram"]),
    st.integers(0, len(LABELS) - 1),
    st.one_of(st.integers(0, 10**12), st.floats(0, 100, allow_nan=False)),
    st.booleans(),
), max_size=60)


def _pair(registry: CollectorRegistry, loop: bool) -> tuple[object, object, object]:
    counter_type = LoopCounter if loop else Counter
    histogram_type = LoopHistogram if loop else Histogram
    counter = counter_type("t_payments", "Labelled.", ["channel"], registry=registry)
    plain = counter_type("t_plain", "Unlabelled.", registry=registry)
    histogram = histogram_type("t_seconds", "Latency.", ["channel"], buckets=LATENCY_BUCKETS,
                               registry=registry)
    return counter, plain, histogram


def _apply(metrics: tuple[object, object, object], ops: list[tuple[str, int, float, bool]]
           ) -> None:
    counter, plain, histogram = metrics
    for kind, label, amount, exemplar in ops:
        if kind == "counter":
            counter.labels(LABELS[label]).inc(amount)  # type: ignore[attr-defined]
        elif kind == "plain":
            plain.inc(amount)  # type: ignore[attr-defined]
        else:
            histogram.labels(LABELS[label]).observe(  # type: ignore[attr-defined]
                amount, exemplar={"payment_id": f"p{label}"} if exemplar else None)


def _without_exemplar_times(text: bytes) -> str:
    # prometheus-client stamps an exemplar with the wall clock; ours carry none.
    return re.sub(r"(# \{[^}]*\} \S+) \S+$", r"\1", text.decode(), flags=re.M)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_the_exposition_is_prometheus_clients(ops: list[tuple[str, int, float, bool]]) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    _apply(_pair(theirs, loop=False), ops)
    _apply(_pair(ours, loop=True), ops)
    assert generate_latest(ours) == generate_latest(theirs)
    assert (_without_exemplar_times(generate_openmetrics(ours))
            == _without_exemplar_times(generate_openmetrics(theirs)))


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    registry = CollectorRegistry()
    histogram = LoopHistogram("t_seconds", "Latency.", buckets=(0.1, 1.0), registry=registry)
    for value in (0.1, 1.0, 1.0000001, 0.0):
        histogram.observe(value)
    assert registry.get_sample_value("t_seconds_bucket", {"le": "0.1"}) == 2
    assert registry.get_sample_value("t_seconds_bucket", {"le": "1.0"}) == 3
    assert registry.get_sample_value("t_seconds_bucket", {"le": "+Inf"}) == 4
    assert registry.get_sample_value("t_seconds_count") == 4


def test_counters_refuse_to_go_down_and_families_check_their_labels() -> None:
    counter = LoopCounter("t_c", "C.", ["channel"], registry=None)
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("card").inc(-1)
    with pytest.raises(ValueError, match="1 label values expected"):
        counter.labels("card", "extra")
    with pytest.raises(ValueError, match="strictly increasing"):
        LoopHistogram("t_h", "H.", buckets=(1.0, 0.5))


def test_a_name_registered_twice_is_refused() -> None:
    registry = CollectorRegistry()
    LoopCounter("t_twice", "C.", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("t_twice", "C.", registry=registry)


def test_the_switch_exposes_its_loop_metrics() -> None:
    metrics = SwitchMetrics(networks=["card-a"])
    metrics.payments[("card", "approved")].inc()  # type: ignore[index]
    metrics.duration["card"].observe(0.003)
    metrics.sli_total.inc()
    text = generate_latest(metrics.registry).decode()
    assert 'payswitch_payments_total{channel="card",status="approved"} 1.0' in text
    assert 'payswitch_payment_duration_seconds_bucket{channel="card",le="0.005"} 1.0' in text
    assert "payswitch_sli_payments_total 1.0" in text
