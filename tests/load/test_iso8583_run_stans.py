"""ISO 8583 load runs start their STANs where their run tag says, not at 000001.

An issuer that remembers STAN + terminal (our card simulator, for ``duplicate_window_s``,
60 s) answered nearly every request of a run started within that window of the last one
94: both runs sent 000001, 000002, ... from each terminal.
"""

from __future__ import annotations

from loadtests.harness.iso8583_client import Iso8583Wire, first_stan
from loadtests.harness.loadrun import make_wire
from loadtests.harness.wires import Iso8583Options
from tests.payments import card_payment


def _stans(wire: Iso8583Wire, n: int, prefix: str) -> list[str]:
    return [wire._document(card_payment(f"{prefix}-{i}"))[0]["11"] for i in range(n)]


def test_two_runs_send_other_stans_and_one_run_the_same() -> None:
    first = _stans(Iso8583Wire(Iso8583Options(), run_tag="L0abc12"), 50, "a")
    second = _stans(Iso8583Wire(Iso8583Options(), run_tag="L0abc13"), 50, "b")
    again = _stans(Iso8583Wire(Iso8583Options(), run_tag="L0abc12"), 50, "c")
    assert not set(first) & set(second)
    assert first == again  # the same run tag, the same STANs (a rerun of a seed)
    assert first_stan("") == 0  # no tag: from 000001, as Locust's users and tests have it


def test_the_generator_processes_of_one_run_still_never_share_a_stan() -> None:
    wires = [make_wire("iso8583", "127.0.0.1:1", Iso8583Options(), process=p, processes=3,
                       run_tag="L0zz999") for p in range(3)]
    drawn = [_stans(w, 200, f"p{i}") for i, w in enumerate(wires)  # type: ignore[arg-type]
             ]
    assert all(len(set(s)) == 200 for s in drawn)
    assert not (set(drawn[0]) & set(drawn[1]) or set(drawn[0]) & set(drawn[2])
                or set(drawn[1]) & set(drawn[2]))
