"""A seed's fault schedule: network faults, switch crashes and disk faults, drawn up front.

Everything a run will suffer is decided here, before the first event, from one
``random.Random`` derived from the seed: the run itself never flips a coin about faults.
That keeps a failing seed replayable and lets a schedule be printed (and shrunk by hand)
as a list.

Intensity scales the expected number of faults per simulated ten minutes (1.0: about six
network faults, one switch crash, one disk stall, and a journal fsync failure or a full
disk in about half of the runs). A third of the crashes restart with the wall clock moved
(-120 s to +600 s): record times and DE7 follow the wall anchor, durations do not. Every
network fault ends before the load does, so the drain after the load sees every network
back: that is when "no unknown left" is judged.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from channels.faults import Fault, FaultConfigError, validate_fault_schedule

#: The endpoints of the simulated world (examples/channels.toml and examples/routes.toml).
CARD_ENDPOINTS: Final = ("card-primary", "card-secondary")
ENDPOINTS: Final = (*CARD_ENDPOINTS, "swift", "qr")
#: Card BIN prefixes a ``partial`` fault may scope itself to (the workload's PANs start 4).
PARTIAL_PREFIXES: Final = ("40", "41", "42", "43", "44", "45", "46", "47", "48", "49")
NETWORK_KINDS: Final = ("down", "blackhole", "slow", "error_burst", "flapping", "partial",
                        "reset", "malformed", "duplicate", "late")

DiskKind = Literal["stall", "fsync_fail", "disk_full"]


@dataclass(frozen=True, slots=True)
class DiskFault:
    kind: DiskKind
    at: float
    duration_s: float  # stall: extra commit latency window; disk_full: how long; fsync: 0


@dataclass(frozen=True, slots=True)
class Schedule:
    duration_s: float
    faults: tuple[Fault, ...]
    #: (at, down for, wall-clock jump at the restart: the wall anchor may move, both ways)
    crashes: tuple[tuple[float, float, float], ...]
    disk: tuple[DiskFault, ...] = field(default=())

    @property
    def injected(self) -> int:
        return len(self.faults) + len(self.crashes) + len(self.disk)

    def describe(self) -> list[str]:
        lines = [f"{f.start_s:9.3f}s {f.kind:<11} {f.endpoint:<14} for {f.duration_s or 0:.1f}s"
                 + _params(f) for f in self.faults]
        lines += [f"{at:9.3f}s crash       switch         down {down:.1f}s"
                  + (f" wall clock {jump:+.1f}s at restart" if jump else "")
                  for at, down, jump in self.crashes]
        lines += [f"{d.at:9.3f}s {d.kind:<11} journal-disk   for {d.duration_s:.1f}s"
                  for d in self.disk]
        return sorted(lines)


def _params(f: Fault) -> str:
    parts = [f"{name}={getattr(f, name)}" for name in ("factor", "rate", "period_s", "delay_s",
                                                       "match") if getattr(f, name) is not None]
    return (" " + " ".join(parts)) if parts else ""


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: small means only (ours are tens at most)."""
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-min(mean, 500.0)), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def draw_schedule(seed: int, duration_s: float, intensity: float, *,
                  crashes: bool = True, disk: bool = True) -> Schedule:
    """The fault schedule of ``seed``: a pure function of its arguments."""
    rng = random.Random(f"payswitch-sim-faults:{seed}")
    per_10min = duration_s / 600.0 * intensity
    faults: list[Fault] = []
    for _ in range(_poisson(rng, 6.0 * per_10min)):
        fault = _network_fault(rng, duration_s)
        try:
            validate_fault_schedule([*faults, fault])
        except FaultConfigError:
            continue  # contradicts one already drawn (e.g. down over a blackhole): skip it
        faults.append(fault)
    crash_list: list[tuple[float, float, float]] = []
    if crashes:
        for _ in range(_poisson(rng, 1.0 * per_10min)):
            at, down = rng.uniform(1.0, duration_s * 0.95), rng.uniform(0.5, 8.0)
            u, jump = rng.random(), rng.uniform(-120.0, 600.0)
            crash_list.append((round(at, 6), round(down, 6), round(jump, 3) if u < 0.3 else 0.0))
    disk_list: list[DiskFault] = []
    if disk:
        for _ in range(_poisson(rng, 1.0 * per_10min)):
            disk_list.append(DiskFault("stall", round(rng.uniform(0.0, duration_s * 0.9), 6),
                                       round(rng.uniform(0.05, 3.0), 6)))
        for _ in range(_poisson(rng, 0.3 * per_10min)):
            disk_list.append(DiskFault("fsync_fail", round(rng.uniform(1.0, duration_s * 0.9),
                                                           6), 0.0))
        for _ in range(_poisson(rng, 0.2 * per_10min)):
            disk_list.append(DiskFault("disk_full", round(rng.uniform(1.0, duration_s * 0.9), 6),
                                       round(rng.uniform(1.0, 20.0), 6)))
    return Schedule(duration_s, tuple(faults), tuple(sorted(crash_list)),
                    tuple(sorted(disk_list, key=lambda d: (d.at, d.kind))))


def _network_fault(rng: random.Random, duration_s: float) -> Fault:
    kind: Any = rng.choice(NETWORK_KINDS)  # one of FaultKind, by construction
    endpoint = rng.choice(ENDPOINTS)
    start = round(rng.uniform(0.0, duration_s * 0.85), 6)
    # Ends before the load does: the drain after it sees every network back.
    length = round(min(rng.uniform(1.0, 120.0), max(0.5, duration_s * 0.95 - start)), 6)
    u = rng.random()  # one draw for the kind's parameter, whatever the kind
    window: dict[str, Any] = {"kind": kind, "endpoint": endpoint, "start_s": start,
                              "duration_s": length}
    if kind == "slow":
        return Fault(**window, factor=round(2.0 + u * 200.0, 3))
    if kind in ("error_burst", "reset", "malformed", "duplicate"):
        return Fault(**window, rate=round(0.05 + 0.95 * u, 3))
    if kind == "late":
        return Fault(**window, rate=round(0.05 + 0.9 * u, 3), delay_s=round(0.5 + 8.0 * u, 3))
    if kind == "flapping":
        return Fault(**window, period_s=round(1.0 + 60.0 * u, 3))
    if kind == "partial":
        return Fault(**window, match=(PARTIAL_PREFIXES[int(u * len(PARTIAL_PREFIXES))],))
    return Fault(**window)
