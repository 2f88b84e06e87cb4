"""k6-style pass/fail thresholds on a load run: ``p99<50ms``, ``errors<0.1%``, ``rps>=900``.

A threshold is ``[CHANNEL:]METRIC OP VALUE[UNIT]``, evaluated on a run's ``summary.json``
(so on the exact, merged HdrHistogram of every generator process):

========== ======================================================= ==================
metric     what                                                    value
========== ======================================================= ==================
``pNN``    latency percentile from intended send time (p50, p99.9)  ``ms`` (default),
``mean``   mean latency                                            ``us``, ``s``
``max``    highest latency
``errors`` error replies and requests with no reply, except the    ``%`` of requests,
           errors planted on purpose (invalid, malformed)          or a count
``failed`` payments answered ``failed`` or ``unknown``             ``%`` or a count
``shed``   requests the switch refused as ``overloaded``           ``%`` or a count
``rps``    replies per second over the run                         ``/s`` (optional),
                                                                   or ``%`` of offered
``lag``    the generator's largest lag behind its schedule         ``ms``, ``us``, ``s``
========== ======================================================= ==================

``CHANNEL:`` (``card:p99<20ms``) scopes a latency metric to one channel. Operators:
``<``, ``<=``, ``>``, ``>=``. A malformed threshold raises :class:`ThresholdError`
with a one-line message; the command line turns it into exit code 2.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtests.harness.hlog import max_ms, pct_ms

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
_PATTERN = re.compile(
    r"^\s*(?:(?P<channel>[a-z][a-z0-9_-]*):)?(?P<metric>[a-z]+[0-9.]*)\s*"
    r"(?P<op><=|>=|<|>)\s*(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[a-z%/]*)\s*$",
    re.IGNORECASE,
)
_TIME_UNITS = {"": 1.0, "ms": 1.0, "us": 0.001, "µs": 0.001, "s": 1000.0}
_SHARE_METRICS = ("errors", "failed", "shed")
EXAMPLES = "e.g. 'p99<50ms', 'errors<0.1%', 'rps>=900', 'card:p99.9<=100ms'"


class ThresholdError(ValueError):
    """A threshold that cannot be parsed; the message is one line and names it."""


@dataclass(frozen=True)
class Threshold:
    text: str
    metric: str  # p99, mean, max, errors, failed, shed, rps, lag
    op: str
    value: float  # ms for latency and lag; a share 0..1 when ``share``; else a count or /s
    share: bool = False
    channel: str | None = None

    def describe_limit(self) -> str:
        if self.share:
            return f"{self.op} {self.value * 100:g}%"
        if self.metric == "rps":
            return f"{self.op} {self.value:g}/s"
        if self._is_time():
            return f"{self.op} {self.value:g} ms"
        return f"{self.op} {self.value:g}"

    def _is_time(self) -> bool:
        return self.metric in ("mean", "max", "lag") or self.metric.startswith("p")


@dataclass(frozen=True)
class ThresholdResult:
    threshold: Threshold
    measured: float
    measured_text: str
    passed: bool

    def line(self) -> str:
        mark = "pass" if self.passed else "FAIL"
        return (f"{mark}  {self.threshold.text}: measured {self.measured_text} "
                f"(limit {self.threshold.describe_limit()})")


def parse_threshold(text: str) -> Threshold:
    match = _PATTERN.match(text)
    if match is None:
        raise ThresholdError(f"threshold {text!r}: expected [CHANNEL:]METRIC OP VALUE, {EXAMPLES}")
    metric = match["metric"].lower()
    unit = match["unit"].lower()
    value = float(match["value"])
    channel = match["channel"]
    percentile = re.fullmatch(r"p([0-9]+(?:\.[0-9]+)?)", metric)
    if percentile is not None:
        if not 0 < float(percentile[1]) <= 100:
            raise ThresholdError(f"threshold {text!r}: a percentile is between p0 and p100")
    elif metric not in ("mean", "max", "lag", "rps", *_SHARE_METRICS):
        raise ThresholdError(
            f"threshold {text!r}: unknown metric {metric!r}; use pNN (p50, p99, p99.9), mean, "
            "max, errors, failed, shed, rps or lag"
        )
    if channel is not None and percentile is None and metric not in ("mean", "max"):
        raise ThresholdError(f"threshold {text!r}: only latency metrics take a channel")
    share = False
    if percentile is not None or metric in ("mean", "max", "lag"):
        if unit not in _TIME_UNITS:
            raise ThresholdError(f"threshold {text!r}: latency unit must be ms, us or s")
        value *= _TIME_UNITS[unit]
    elif metric in _SHARE_METRICS:
        if unit == "%":
            share, value = True, value / 100.0
        elif unit:
            raise ThresholdError(f"threshold {text!r}: {metric} takes a % or a count")
    elif metric == "rps":
        if unit == "%":
            share, value = True, value / 100.0
        elif unit not in ("", "/s"):
            raise ThresholdError(f"threshold {text!r}: rps takes /s or a % of the offered rate")
    return Threshold(text.strip(), metric, match["op"], value, share, channel)


def parse_thresholds(texts: Sequence[str]) -> list[Threshold]:
    return [parse_threshold(t) for t in texts]


def measure(
    threshold: Threshold,
    summary: Mapping[str, Any],
    histograms: Mapping[str | None, HdrHistogram] | None = None,
) -> tuple[float, str]:
    """The measured value (in the threshold's units) and how to show it.

    ``histograms`` (None: all channels; else per channel) gives any percentile exactly;
    without them, the percentiles written in the summary are used.
    """
    totals = summary["totals"]
    metric = threshold.metric
    if metric.startswith("p") or metric in ("mean", "max"):
        channel = threshold.channel
        hist = (histograms or {}).get(channel)
        if hist is not None and hist.get_total_count():
            if metric == "mean":
                value = hist.get_mean_value() / 1000.0
            elif metric == "max":
                value = max_ms(hist)
            else:
                value = pct_ms(hist, float(metric[1:]))
            return value, f"{value:,.3f} ms"
        latency = summary["latency_ms"]
        if channel is not None:
            latency = summary.get("latency_by_channel_ms", {}).get(channel)
            if latency is None:
                raise ThresholdError(
                    f"threshold {threshold.text!r}: no replies on channel {channel!r}"
                )
        if latency.get("count", 1) == 0:
            # An empty histogram's percentiles read 0: a run with no requests would pass
            # any latency threshold.
            where = f" on channel {channel!r}" if channel is not None else ""
            raise ThresholdError(f"threshold {threshold.text!r}: no requests{where}")
        key = metric if metric in ("mean", "max") else f"p{float(metric[1:]):g}"
        if key not in latency:
            raise ThresholdError(f"threshold {threshold.text!r}: {key} not in the summary")
        value = float(latency[key])
        return value, f"{value:,.3f} ms"
    if metric == "lag":
        value = float(summary["generator"]["max_lag_ms"])
        return value, f"{value:,.3f} ms"
    if metric == "rps":
        achieved = float(totals["achieved_rate"])
        if threshold.share:
            if float(totals["offered_rate"]) <= 0:
                raise ThresholdError(f"threshold {threshold.text!r}: nothing was offered")
            share = achieved / float(totals["offered_rate"])
            return share, f"{share * 100:.2f}% of offered ({achieved:,.1f}/s)"
        return achieved, f"{achieved:,.1f}/s"
    count = int(outcome_counts(summary)[metric])
    requests = int(totals["sent"]) + int(totals.get("dropped_overrun", 0))
    if requests <= 0:
        # No request at all: "0 errors" and "0% errors" would pass on nothing measured.
        raise ThresholdError(f"threshold {threshold.text!r}: no requests")
    if threshold.share:
        return count / requests, f"{count / requests * 100:.3f}% ({count:,} of {requests:,})"
    return float(count), f"{count:,}"


def outcome_counts(summary: Mapping[str, Any]) -> dict[str, int]:
    """``errors`` (real ones), ``failed`` and ``shed`` counts of a run's summary."""
    totals = summary["totals"]
    errors = dict(totals.get("errors", {}))
    planted = dict(totals.get("planted_errors", {}))
    statuses = totals.get("statuses", {})
    real = sum(errors.values()) - sum(planted.values())
    return {
        "errors": real,
        "failed": int(statuses.get("failed", 0)) + int(statuses.get("unknown", 0)),
        "shed": int(errors.get("overloaded", 0)),
    }


def evaluate(
    thresholds: Sequence[Threshold],
    summary: Mapping[str, Any],
    histograms: Mapping[str | None, HdrHistogram] | None = None,
) -> list[ThresholdResult]:
    """Every threshold's result; one that cannot be measured (no replies on its channel)
    fails, saying why."""
    results = []
    for threshold in thresholds:
        try:
            value, text = measure(threshold, summary, histograms)
        except ThresholdError as exc:
            results.append(ThresholdResult(threshold, math.nan, f"nothing ({exc})", False))
            continue
        results.append(
            ThresholdResult(threshold, value, text, _OPS[threshold.op](value, threshold.value))
        )
    return results
