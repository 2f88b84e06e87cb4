"""The demo's rate, calibrated on the machine it runs on: a short ramp, half the highest
healthy step; and the summary lines that say when the switch itself was saturated."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx
from rich.console import Console

from loadtests.harness.loadgen import Acknowledged, LoadStats, OpenLoopGenerator
from loadtests.harness.workload import Workload

#: The calibration ramp: each rate for CALIBRATION_STEP_S, doubling until one is unhealthy.
CALIBRATION_RATES = (250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)


CALIBRATION_STEP_S = 1.0


#: A step is healthy when nothing is shed, p99 stays under this and the generator keeps up.
CALIBRATION_P99_MS = 50.0


#: The demo runs at this share of the highest healthy step: the rest is headroom for the
#: other work on the machine (and the fault you may inject), which varies during a run.
CALIBRATION_HEADROOM = 0.5


#: Below the first step's health, the demo still runs, this slowly.
CALIBRATION_FLOOR = 100.0


@dataclass
class Calibration:
    """The demo's rate, and the ramp that chose it."""

    rate: float
    steps: list[tuple[float, str | None]]  # (rate, problem or None when healthy)
    acknowledged: dict[str, Acknowledged]

    def explain(self, cores: int) -> str:
        healthy = [r for r, problem in self.steps if problem is None]
        if not self.steps:
            return f"{self.rate:.0f}/s (calibration interrupted)"
        if not healthy:
            return (f"{self.rate:.0f}/s: even {self.steps[0][0]:.0f}/s was unhealthy "
                    f"({self.steps[0][1]}) on this machine just now")
        top = max(healthy)
        limit = next((f"; {r:.0f}/s was not ({problem})" for r, problem in self.steps
                      if problem is not None), f"; {top:.0f}/s is the top of the ramp")
        return (f"{self.rate:.0f}/s = {CALIBRATION_HEADROOM:.0%} of {top:.0f}/s, the highest "
                f"rate this machine ({cores} cores) served healthily just now (nothing shed, "
                f"p99 <= {CALIBRATION_P99_MS:.0f} ms){limit}. The rest is headroom for "
                "other work; pass --rate to choose")


def step_problem(stats: LoadStats) -> str | None:
    """Why a calibration step was unhealthy, or None."""
    overloaded = stats.errors.get("overloaded", 0)
    if overloaded:
        return f"{overloaded} shed as overloaded"
    not_answered = stats.unanswered + stats.dropped_overrun + stats.connection_lost
    if not_answered:
        return f"{not_answered} requests not answered"
    p99 = stats.percentile_ms(99)
    if p99 > CALIBRATION_P99_MS:
        return f"p99 {p99:.0f} ms"
    if stats.lagged > 0.01 * max(stats.sent, 1):
        return "the load generator fell behind"
    failed = stats.by_status.get("failed", 0) + stats.by_status.get("unknown", 0)
    if failed > max(2.0, 0.02 * stats.replies):
        return f"{failed} failed or unknown"
    return None


def calibrate(
    port: int, connections: int, seed: int, console: Console, should_stop: Callable[[], bool]
) -> Calibration:
    """A short ramp against the running switch: the demo's rate from what it served."""
    steps: list[tuple[float, str | None]] = []
    acknowledged: dict[str, Acknowledged] = {}
    console.print("calibrating the rate (a short ramp; --rate skips it):", end="",
                  highlight=False)

    async def ramp() -> None:
        # Warm-up first (imports, first-use kernels, connection set-up), not judged.
        warm = OpenLoopGenerator(Workload(seed, key_prefix="warm").next, rate=100.0,
                                 duration_s=0.5, connections=connections,
                                 should_stop=should_stop)
        acknowledged.update((await warm.run("127.0.0.1", port)).acknowledged)
        for i, rate in enumerate(CALIBRATION_RATES):
            if should_stop():
                return
            generator = OpenLoopGenerator(
                Workload(seed + i, key_prefix=f"cal{i}-").next, rate=rate,
                duration_s=CALIBRATION_STEP_S, connections=connections,
                should_stop=should_stop)
            stats = await generator.run("127.0.0.1", port)
            acknowledged.update(stats.acknowledged)
            problem = step_problem(stats)
            steps.append((rate, problem))
            console.print(("," if i else "") + f" {rate:.0f}/s " + (
                f"too much ({problem})" if problem else
                f"ok (p99 {stats.percentile_ms(99):.1f} ms)"), end="", highlight=False)
            if problem is not None:
                return

    anyio.run(ramp, backend="asyncio", backend_options={"use_uvloop": True})
    console.print()
    return Calibration(choose_rate(steps), steps, acknowledged)


def choose_rate(steps: list[tuple[float, str | None]]) -> float:
    """Half the highest healthy step (never below the floor)."""
    healthy = [r for r, problem in steps if problem is None]
    if not healthy:
        return CALIBRATION_FLOOR
    return max(CALIBRATION_FLOOR, CALIBRATION_HEADROOM * max(healthy))


def switch_figures(metrics_url: str) -> dict[str, float]:
    """Signs of saturation in the switch's own counters (empty if unreachable)."""
    try:
        text = httpx.get(metrics_url, timeout=2.0).text
    except httpx.HTTPError:
        return {}
    figures = {"timeouts": 0.0, "breaker_opens": 0.0, "shed": 0.0, "overloaded": 0.0}
    for line in text.splitlines():
        if line.startswith("payswitch_network_timeouts_total{"):
            figures["timeouts"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("payswitch_breaker_transitions_total{") and (
                'to_state="open"' in line):
            figures["breaker_opens"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("payswitch_shed_payments_total{"):
            figures["shed"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith('payswitch_rejected_requests_total{reason="overloaded"}'):
            figures["overloaded"] += float(line.rsplit(" ", 1)[1])
    return figures


#: How many standard deviations above the networks' configured failures a run's failures
#: may be and still be put down to chance (a binomial draw), not to saturation.
FAILURE_SIGMAS = 3.0


def expected_failures(accepted: int, error_rate: float) -> int:
    """Failures the networks' configured error rate explains in ``accepted`` payments:
    the binomial mean plus FAILURE_SIGMAS standard deviations, rounded up."""
    if error_rate <= 0 or accepted <= 0:
        return 0
    mean = accepted * error_rate
    return math.ceil(mean + FAILURE_SIGMAS * math.sqrt(mean * (1 - min(error_rate, 1.0))))


def saturation_lines(
    stats: LoadStats, figures: dict[str, float], rate: float, calibrated: bool, cores: int,
    *, networks: str = "sim", error_rate: float = 0.0,
) -> list[str]:
    """When payments failed or were shed with no fault injected: say so, and what to change.

    Failures the networks were configured to produce (``error_rate``: the stand-ins'
    ``error_rate``, the simulators' technical errors) are not the machine's: only failures
    beyond what that rate explains (:func:`expected_failures`) are a sign of saturation,
    and a run with no other sign gets one line saying where its failures came from. The
    advice never names a rate above the one that saturated.
    """
    signs = []
    overloaded = stats.errors.get("overloaded", 0)
    if overloaded:
        signs.append(f"{overloaded} payments shed as overloaded")
    failed = stats.by_status.get("failed", 0) + stats.by_status.get("unknown", 0)
    accepted = sum(stats.by_status.values())
    share = failed / max(accepted, 1)
    explained = expected_failures(accepted, error_rate)
    if failed - explained > 0.01 * max(accepted, 1):
        beyond = (f", more than the {error_rate:.1%} the networks fail on purpose"
                  if error_rate > 0 else "")
        signs.append(f"{failed} failed or unknown ({share:.1%}{beyond})")
    if figures.get("timeouts"):
        signs.append(f"{figures['timeouts']:.0f} network requests timed out")
    if figures.get("breaker_opens"):
        signs.append(f"breakers opened {figures['breaker_opens']:.0f} times")
    p99 = stats.percentile_ms(99)
    if signs and p99 > 100:
        signs.append(f"p99 {p99:.0f} ms")
    standin = networks == "standin"
    kind = "stand-in networks" if standin else "simulators"
    if not signs:
        if not failed:
            return []
        knob = "error_rate" if standin else "technical_error_rate"
        return [f"{failed} failed or unknown ({share:.1%}): within what the {kind} fail on "
                f"purpose ({knob} {error_rate:.1%}), not a sign of saturation."]
    lower = math.floor(rate / 2)
    example = f" (e.g. --rate {lower})" if 1 <= lower < rate else ""
    if calibrated:
        advice = ("the machine got busier after calibration; run again, or pass a lower "
                  f"--rate{example}")
    elif lower >= CALIBRATION_FLOOR:
        advice = f"omit --rate to let the demo calibrate a healthy rate{example}"
    else:
        # Calibration never picks less than its floor: no advice for a slower run.
        advice = f"pass a lower --rate{example}"
    sharing = ("the switch, its in-process stand-in networks and this load generator"
               if standin else "the switch, the simulators and this load generator")
    return [
        f"SATURATED: with no fault injected, {', '.join(signs)}: this machine ({cores} "
        f"cores, shared by {sharing}) did not keep up with {rate:.0f}/s.",
        f"  what to change: {advice}; stop other CPU-heavy work; watch `payswitch top` "
        "while it runs.",
    ]
