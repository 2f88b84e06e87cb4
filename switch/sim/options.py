"""A seed's options and result, and the simulated switch's configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

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
