"""Network adapters from configuration.

:func:`build_network_adapter` turns one entry of the switch's network list (a
:data:`~switch.adapters.specs.NetworkAdapterSpec`) into a
:class:`~switch.adapters.base.ChannelAdapter` that talks to a simulator over TCP.
"""

from __future__ import annotations

from switch.adapters.base import ChannelAdapter
from switch.adapters.iso8583 import CardAdapter
from switch.adapters.qr import QrAdapter
from switch.adapters.specs import CardAdapterConfig, NetworkAdapterSpec, SwiftAdapterConfig
from switch.adapters.swift import SwiftAdapter


def build_network_adapter(spec: NetworkAdapterSpec) -> ChannelAdapter:
    """The adapter for ``spec``. Start it with ``await task_group.start(adapter.run)``."""
    if isinstance(spec, CardAdapterConfig):
        return CardAdapter(spec)
    if isinstance(spec, SwiftAdapterConfig):
        return SwiftAdapter(spec)
    return QrAdapter(spec)
