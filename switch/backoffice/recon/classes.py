"""Break classes and the records they name: which classes are explained or not breaks at all,
their severity and suggested action, and the report a reconciliation produces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from switch.backoffice.recon.kernels import (
    BreakClass,
)
from switch.currency import CURRENCIES

#: Listed as breaks, with their action, but not "unexplained": the exit code ignores them.


#: Listed as breaks, with their action, but not "unexplained": the exit code ignores them.
EXPLAINED: Final = frozenset({"standin_exposure", "late_settlement"})


NOT_BREAKS: Final = frozenset(
    {"matched", "matched_tolerance", "matched_netted", "expected_absent", "outside_files"}
)


SUGGESTED_ACTION: Final = {
    "missing_at_network": "Ask the network for the record; if it never settled, reverse "
    "or refund the payment and correct the ledger.",
    "missing_in_switch": "Find the payment at the network; book it if legitimate, else "
    "dispute it with the network.",
    "amount_mismatch": "Compare amounts and fees with the network; post an adjustment for "
    "the difference.",
    "currency_mismatch": "Check the currency conversion at the network; correct the entry.",
    "status_mismatch": "The network settled a payment the switch did not approve: raise "
    "a chargeback or book it after investigation.",
    "duplicate": "The same reference appears twice: claim the duplicate back.",
    "orphan_reversal": "A reversal with no approved payment: ask the network which "
    "payment it reverses.",
    "late_settlement": "Settled in a later cycle than expected: accrue it, no money lost.",
    "standin_exposure": "Approved in stand-in; the issuer refused the advice (recorded in "
    "the journal): recover from the acquirer or write off, within stand-in limits.",
}


#: breaks.csv order: unexplained money breaks first, the explained ones last.
SEVERITY: Final = (
    "amount_mismatch", "currency_mismatch", "missing_in_switch", "missing_at_network",
    "status_mismatch", "duplicate", "orphan_reversal", "standin_exposure", "late_settlement",
)


KIND_NAMES: Final = (
    *(c.name.lower() for c in sorted(BreakClass)),
    "expected_absent", "matched_netted", "orphan_reversal", "late_settlement",
    "standin_exposure", "outside_files",
)


@dataclass(frozen=True, slots=True)
class Record:
    channel: str
    reference: str
    amount: int
    currency: str
    status: str
    time_us: int
    source: str  # payment id (switch) or file name (network)
    #: Who the money goes to, as the network names it (QR merchant id, card/SWIFT payee):
    #: what a netted network entry aggregates by.
    counterparty: str = ""
    #: The switch approved it in stand-in, on the issuer's behalf.
    stood_in: bool = False
    #: Stand-in advice: "" none recorded, "delivered", or "refused" (by the issuer).
    advice: str = ""
    #: File line (network side), 0 when unknown.
    line: int = 0


@dataclass(frozen=True, slots=True)
class Break:
    kind: str
    switch: Record | None
    network: Record | None
    action: str

    def at_stake(self) -> int:
        """Minor units at stake: the difference of an amount break, else the amount."""
        s, n = self.switch, self.network
        if self.kind == "amount_mismatch" and s is not None and n is not None:
            return abs(s.amount - n.amount)
        side = s or n
        return abs(side.amount) if side is not None else 0


class BreakColumns(Protocol):
    """The breaks as columns (``switch.backoffice.recon.breaks.BreakTable``)."""

    def __len__(self) -> int: ...

    @property
    def unexplained(self) -> int: ...


@dataclass
class ReconReport:
    switch_records: int
    network_records: int
    counts: dict[str, int]
    amounts: dict[str, dict[str, int]]  # class -> currency -> minor units
    #: In report order; built from :attr:`table` on access when there is one.
    breaks: Sequence[Break]
    warnings: list[str] = field(default_factory=list)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The breaks as columns (what breaks.csv is written from); None for an empty match.
    table: BreakColumns | None = None

    @property
    def unexplained(self) -> int:
        """Breaks nobody can account for yet; stand-in exposure (issuer refusal on
        record) and late settlement are listed but explained."""
        if self.table is not None:
            return self.table.unexplained
        return sum(1 for b in self.breaks if b.kind not in EXPLAINED)


def _major(minor: int, b: Break) -> float:
    side = b.switch or b.network
    exp = CURRENCIES.get(side.currency, (0, 2))[1] if side is not None else 2
    return float(minor) / float(10**int(exp))
