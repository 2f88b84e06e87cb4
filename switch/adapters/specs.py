"""The network adapters' configuration: one msgspec tagged union on ``kind``.

``"card"``, ``"swift"`` and ``"qr"`` entries of the switch's network list. Plain structs,
so the config loader names the whole union without importing any adapter.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
NetworkName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class AdapterConfig(
    msgspec.Struct, tag_field="kind", forbid_unknown_fields=True, frozen=True, kw_only=True
):
    """Settings every network adapter shares. ``name`` is the network's name in routes."""

    name: NetworkName
    #: The simulator endpoint's address.
    host: str = "127.0.0.1"
    #: The port that endpoint listens on (its `port` in the channels config).
    port: Port
    #: Persistent connections to the endpoint, used round-robin.
    connections: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    #: Give up a connection attempt after this long (then back off and redial).
    connect_timeout_s: Seconds = 1.0
    #: A write blocked longer than this (peer not reading) drops the connection.
    send_timeout_s: Seconds = 1.0
    #: First redial delay; doubles per failure, with jitter.
    reconnect_initial_s: Seconds = 0.05
    #: Longest redial delay.
    reconnect_max_s: Seconds = 2.0
    #: Requests awaiting an answer; past this, new ones are refused as NotSent.
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 8192
    #: Seeds the reconnect jitter (and nothing that decides an outcome).
    seed: int = 1


class CardAdapterConfig(
    AdapterConfig, tag="card", forbid_unknown_fields=True, frozen=True, kw_only=True
):
    """ISO 8583 over TCP with a 2-byte length prefix."""

    #: DE32, and the acquirer part of DE90 in reversals.
    acquirer_id: Annotated[
        str, msgspec.Meta(min_length=1, max_length=11, pattern=r"\A[0-9]+\Z")
    ] = "123456"
    #: Sign on (0800/001) before a connection carries payments.
    sign_on: bool = True
    #: Echo test (0800/301) on every connection this often.
    echo_interval_s: Seconds = 5.0
    #: How long to wait for a sign-on or echo answer.
    echo_timeout_s: Seconds = 2.0
    #: Consecutive unanswered echoes after which the connection is dropped and redialled.
    echo_failures_to_drop: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2
    #: Wait for one 0410 before repeating the reversal as 0401.
    reversal_timeout_s: Seconds = 1.0
    #: Repeats (0401) after the first 0400, within one resolve() call.
    reversal_repeats: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3


class SwiftAdapterConfig(
    AdapterConfig, tag="swift", forbid_unknown_fields=True, frozen=True, kw_only=True
):
    """pacs.008 / pacs.028 out, pacs.002 in, 4-byte length-prefixed XML."""

    #: pacs.008 GrpHdr/SttlmInf/SttlmMtd.
    settlement_method: Literal["INDA", "INGA", "CLRG"] = "INDA"
    #: pacs.008 ChrgBr.
    charge_bearer: Literal["DEBT", "CRED", "SHAR", "SLEV"] = "SHAR"


class QrAdapterConfig(
    AdapterConfig, tag="qr", forbid_unknown_fields=True, frozen=True, kw_only=True
):
    """The QR scheme's API: 4-byte length-prefixed msgpack."""


#: One entry of the switch's network list.
NetworkAdapterSpec = CardAdapterConfig | SwiftAdapterConfig | QrAdapterConfig
