"""A seed's options and result, and the simulated switch's configuration."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from switch.serve.config import SwitchConfig
from switch.sim.schedule import Schedule

ROOT: Final = Path(__file__).resolve().parents[2]
#: Every run's wall anchor (2026-01-15T00:00:00Z): record timestamps are reproducible.
WALL0: Final = 1_768_435_200.0

def sim_config() -> SwitchConfig:
    """The simulated switch's configuration: defaults, plus resolution schedules per channel
    (QR may not be asked before 90 s, per the scheme rule in the brief)."""
    return msgspec.convert({
        "seed": 42,
        "resolution": {
            "card": {"first_after_s": 0.05, "max_attempts": 100, "within_s": 3600,
                     "max_delay_s": 5.0},
            "swift": {"first_after_s": 1.0, "max_attempts": 100, "within_s": 3600,
                      "max_delay_s": 10.0},
            "qr": {"first_after_s": 90.0, "max_attempts": 100, "within_s": 7200,
                   "max_delay_s": 30.0},
        },
    }, SwitchConfig)


def drawn_config(seed: int) -> SwitchConfig:
    """A configuration drawn from ``seed``: :func:`sim_config` with its resilience,
    resolution, idempotency, stand-in and risk settings varied (swarm testing).

    One configuration hides the bugs that only another one shows: a payment deadline
    above the recovery slack, a retry budget of zero, an admission limit that refuses, an
    idempotency window that evicts, a breaker quick to open or slow to close. Every
    value is one an operator may set and the invariants must hold under; the ranges stay
    inside what the simulator's checks assume of time (a breaker opens for at most 10 s,
    inside the stand-in check's 30 s quiet window; QR is never asked before 90 s). The
    resolver's workers go down to 2: the schedule check counts the time they were all busy
    (switch/sim/saturation.py), so a backlog drained at full capacity is on schedule.
    A breaker that opens on one failure is left out: one everyday 96 from each card
    endpoint then opens both, and the switch stands in for ``open_s`` while the issuer
    answers, as that setting asks (five seeds in forty did, with nothing else wrong).
    ``payswitch serve`` warns of it at start (switch/serve/config.py ``config_warnings``).
    Drawn from its own stream, so the workload and fault draws of a seed do not move.
    """
    rng = random.Random(f"payswitch-config-{seed}")
    pick = rng.choice
    base_delay_s = pick([0.0, 0.01, 0.025, 0.1])
    varied: dict[str, Any] = {
        "resilience": {
            "payment_deadline_s": pick([1.0, 2.0, 3.0, 5.0, 8.0, 15.0, 30.0]),
            "retry": {"max_attempts": pick([1, 2, 3, 5]), "base_delay_s": base_delay_s,
                      "max_delay_s": max(base_delay_s, pick([0.1, 0.5, 2.0]))},
            "retry_budget": {"ratio": pick([0.0, 0.05, 0.1, 0.5, 1.0]),
                             "min_per_s": pick([0.0, 1.0, 10.0])},
            "breaker": {"window": pick(["count", "time"]), "min_calls": pick([1, 5, 20, 50]),
                        "failure_ratio": pick([0.2, 0.5, 0.9]),
                        "consecutive_failures": pick([0, 3, 5, 20]),
                        "open_s": pick([0.5, 2.0, 5.0, 10.0]),
                        "half_open_probes": pick([1, 3, 10])},
            "admission": {"per_endpoint": pick([8, 64, 512]), "total": pick([32, 256, 8192])},
            "probe_interval_s": pick([0.5, 2.0, 10.0]),
        },
        "idempotency": {"max_keys": pick([5_000, 50_000, 2_000_000])},
        "standin": {"enabled": rng.random() < 0.8,
                    "max_pending_advices": pick([16, 1_000, 100_000])},
        "risk": {"velocity": {"max_count": pick([5, 30, 1_000])}},
    }
    resolution = {"card": (pick([0.05, 0.5, 2.0]), pick([1.0, 5.0, 20.0])),
                  "swift": (pick([0.2, 1.0, 5.0]), pick([5.0, 10.0, 30.0])),
                  "qr": (pick([90.0, 120.0]), pick([10.0, 30.0, 60.0]))}
    workers = pick([2, 8, 32])
    base = msgspec.to_builtins(sim_config())
    for section, values in varied.items():
        _merge(base[section], values)
    for channel, (first_after_s, max_delay_s) in resolution.items():
        base["resolution"][channel].update(first_after_s=first_after_s,
                                           max_delay_s=max_delay_s, workers=workers)
    return msgspec.convert(base, SwitchConfig)


def _merge(into: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def run_config(options: SimOptions) -> SwitchConfig:
    """The configuration a seed's switch runs with: the one given, or drawn from the
    seed with ``vary_config``, else the one :func:`sim_config` gives."""
    assert options.config is None or not options.vary_config, "one configuration source"
    if options.config is not None:
        return options.config
    return drawn_config(options.seed) if options.vary_config else sim_config()


class RateAt(Protocol):
    def rate_at(self, t: float) -> float: ...


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    at: float
    subject: str  # idempotency key or payment id
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant} at {self.at:.3f}s on {self.subject}: {self.detail}"


#: Share of new card payments the simulated acquirer reverses (switch/sim/acquirer.py).
REVERSAL_SHARE: Final = 0.01


@dataclass
class SimOptions:
    seed: int
    duration_s: float = 600.0
    rate: float = 200.0
    intensity: float = 1.0
    #: After the load: every fault is over; wait at most this long for resolution to finish.
    drain_s: float = 1200.0
    crashes: bool = True
    disk: bool = True
    schedule: Schedule | None = None  # explicit (scenario files); drawn from the seed if None
    trace_key: str | None = None
    #: A load shape (loadtests.harness.loadgen's ``rate_at``); None: ``rate`` throughout.
    shape: RateAt | None = None
    db_path: str = ":memory:"
    #: Every start folds the whole journal (as the switch does) instead of only the records
    #: written since the previous start; same result, O(journal) per restart.
    full_replay: bool = False
    #: The books at the end: the ledger from the journal, the card clearing files
    #: (channels/settlement.py's writer, cut during the run) against the journal.
    books: bool = True
    #: Share of new card payments the acquirer reverses (switch/sim/acquirer.py; 0: no
    #: acquirer reversals at all, stand-in approvals' included).
    reversal_share: float = REVERSAL_SHARE
    channels_toml: str = str(ROOT / "examples" / "channels.toml")
    routes_toml: str = str(ROOT / "examples" / "routes.toml")
    #: Draw the switch's configuration from the seed (:func:`drawn_config`), not the
    #: one fixed configuration: swarm testing across the settings operators may choose.
    vary_config: bool = False
    #: An explicit configuration (a test's, an operator's question); None: as above.
    config: SwitchConfig | None = None


@dataclass
class SimResult:
    seed: int
    sim_seconds: float
    wall_seconds: float
    payments: int
    faults: int
    violations: list[Violation]
    trace_hash: str
    counters: dict[str, int]
    trace: list[str] = field(default_factory=list)
    schedule: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
