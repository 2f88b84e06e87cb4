"""Review: a route table problem is always a RouteTableError naming its key path."""

from __future__ import annotations

import pytest

from switch.routing.table import load_route_table
from switch.routing.tablespec import RouteTableError

TABLE = """
[targets.visa]
endpoints = ["a"]
[[card.ranges]]
{bounds}
target = "visa"
"""


@pytest.mark.parametrize(
    ("bounds", "path"),
    [
        ('low = "40000\\n"\nhigh = "499999"', "card.ranges[0].low"),
        ('low = "400000"\nhigh = "49999\\n"', "card.ranges[0].high"),
        ('prefix = "400000\\n"', "card.ranges[0].prefix"),
    ],
)
def test_a_bin_bound_ending_in_a_newline_is_rejected_by_key_path(bounds: str, path: str) -> None:
    """msgspec's ``pattern`` is ``re.search``, whose ``$`` also matches before a final
    newline: "40000\\n" passed ``^[0-9]+$`` and the 6-11 length, then ``int()`` raised a
    bare ValueError out of load_route_table. At start-up that was a traceback; on a hot
    reload it escaped ``reload_routes`` (which catches RouteTableError and OSError only)."""
    with pytest.raises(RouteTableError) as info:
        load_route_table(TABLE.format(bounds=bounds), ["a"])
    message = str(info.value)
    assert f"{path}:" in message and "\n" not in message, message


QR_TABLE = """
[targets.qr]
endpoints = ["a"]
[targets.qr-b]
endpoints = ["a"]
[qr]
default = "qr"
by_scheme = [{ gui = "com.payswitch.qr", target = "qr-b" }]
"""


@pytest.mark.parametrize("payload", [
    "000201" + "26" + "0²" + "xxxx",  # a template's length in superscript digits
    "000201" + "26" + "08" + "00" + "0²" + "abcd",  # a sub-element's length likewise
    "000201" + "٢٦" + "08" + "0004abcd",  # a tag in Arabic-Indic digits
])
def test_qr_routing_scan_never_raises_on_other_scripts_digits(payload: str) -> None:
    """``str.isdigit`` accepts superscript and other scripts' digits, which ``int()`` then
    refuses: the scan, documented never to raise, raised ValueError inside routing, so a
    client's payload (validation only checks its "000201" start) made the payment fail as
    an internal error (payswitch_payment_errors, an error log) on any table with QR scheme
    rules."""
    table = load_route_table(QR_TABLE, ["a"])
    target = table.lookup_qr(payload)
    assert target is not None and target.name == "qr"


def test_a_target_name_with_a_newline_is_refused_in_one_line() -> None:
    table = '[targets."visa\\n"]\nendpoints = ["a"]\n[card]\ndefault = "visa"\n'
    with pytest.raises(RouteTableError) as info:
        load_route_table(table, ["a"])
    message = str(info.value)
    assert "targets.'visa\\n'" in message and "\n" not in message, message


@pytest.mark.parametrize(("bounds", "path"), [
    ('low = "456789125"\nhigh = "456789199"', "card.ranges[0].low"),
    ('low = "45678900000"\nhigh = "45678912345"', "card.ranges[0].high"),
    ('prefix = "456789123"', "card.ranges[0].prefix"),
])
def test_a_bound_past_the_routed_digits_is_refused(bounds: str, path: str) -> None:
    # A payment keeps the first 8 PAN digits: 4567891200... and 4567891300... are the
    # same card to routing, and a range between them would route one of them wrongly.
    with pytest.raises(RouteTableError) as info:
        load_route_table(TABLE.format(bounds=bounds), ["a"])
    message = str(info.value)
    assert f"{path}:" in message and "first 8 digits" in message, message


@pytest.mark.parametrize("bounds", [
    'low = "45678900"\nhigh = "45678949"', 'prefix = "45678912"',
    'low = "45678900000"\nhigh = "45678949999"', 'low = "400000"\nhigh = "499999"',
])
def test_bounds_at_up_to_8_digits_are_taken(bounds: str) -> None:
    load_route_table(TABLE.format(bounds=bounds), ["a"])
