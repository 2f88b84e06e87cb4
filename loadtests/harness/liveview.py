"""The demo's live view: offered and achieved rate, latency, errors, breakers, and the
faults seen on the simulators while the load runs."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from loadtests.harness.loadgen import LoadStats


def _progress(
    stats: LoadStats,
    rate: float,
    elapsed: float,
    faults: list[str] | None = None,
    breakers: dict[str, str] | None = None,
) -> Table:
    table = Table(title="payswitch demo (live)", show_header=True)
    table.add_column("offered/s", justify="right")
    table.add_column("achieved/s", justify="right")
    table.add_column("sent", justify="right")
    table.add_column("replies", justify="right")
    for status in ("approved", "declined", "failed", "unknown"):
        table.add_column(status, justify="right")
    table.add_column("errors", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("faults active")
    table.add_column("breakers")
    achieved = stats.replies / elapsed if elapsed > 0 else 0.0
    table.add_row(
        f"{rate:.0f}",
        f"{achieved:.0f}",
        str(stats.sent),
        str(stats.replies),
        *(str(stats.by_status.get(s, 0)) for s in ("approved", "declined", "failed", "unknown")),
        str(sum(stats.errors.values())),
        f"{stats.percentile_ms(99):.2f}",
        ", ".join(faults or []) or "none",
        ", ".join(f"{e}: {st}" for e, st in sorted((breakers or {}).items())) or "-",
    )
    return table


_BREAKER_STATE = {0: "closed", 1: "half-open", 2: "OPEN"}


@dataclass
class FaultSeen:
    endpoint: str
    kind: str
    detail: str
    first_s: float
    last_s: float
