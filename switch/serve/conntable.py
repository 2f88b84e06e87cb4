"""Connection bounds both TCP doors share (msgpack: server.py; ISO 8583: iso8583_door.py).

A door keeps the connections it has taken in a :class:`ConnectionTable`, which holds:

* ``max_connections``: at the limit, the longest-idle connection with nothing in flight
  and no answer owed is closed to make room, so a flood of idle sockets cannot lock
  clients out; if every connection has something in flight or owed, the new one is
  refused;
* ``max_connections_per_source``: one source address cannot take every slot;
* ``handshake_timeout_s`` to the first complete frame and ``idle_timeout_s`` with
  nothing read, nothing in flight and no answer owed, checked by one sweeper task per
  door; a connection whose peer has taken none of its owed answers for
  ``idle_timeout_s`` is closed too.

Answers owed (queued, or in a write the peer has not taken yet) count as work, never as
idleness. Closing a connection drops whatever it still had to send, and an answer queued
after its payment was accepted and journaled is what the client waits for: a resend
recovers it, but only at the cost of a timeout on the client's side. Flushing before the
close was the other choice; it would keep an evicted connection's descriptor (and the
new one's) open for as long as the flush took, so the table would need a second bound
for connections being flushed. Skipping connections that owe answers needs none: the
owed bytes are already bounded by the door's reply buffer, an owed answer normally
leaves within one wake-up of the writer, and the one case where it does not (a peer that
stopped reading) is closed by the sweeper after ``idle_timeout_s`` of taking nothing,
its answers being undeliverable anyway.

What a refusal looks like on the wire is the door's own business (the msgpack door sends
an error reply; an ISO 8583 connection has no request to answer yet, so it is closed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Generic, NoReturn, Protocol, TypeVar

import anyio
import anyio.abc

#: How often the sweeper looks for idle and silent connections.
SWEEP_EVERY_S: Final = 0.5


class ConnectionLimits(Protocol):
    """The config keys a door with a :class:`ConnectionTable` carries, named alike."""

    @property
    def max_connections(self) -> int: ...
    @property
    def max_connections_per_source(self) -> int: ...
    @property
    def handshake_timeout_s(self) -> float: ...
    @property
    def idle_timeout_s(self) -> float: ...


class TrackedConnection(Protocol):
    """What the table reads of a connection, and how it closes one."""

    @property
    def source(self) -> str: ...
    @property
    def opened(self) -> float: ...
    @property
    def last_read(self) -> float: ...
    @property
    def framed(self) -> bool: ...  # a complete frame arrived (the "handshake")
    @property
    def in_flight(self) -> int: ...
    @property
    def closing(self) -> bool: ...
    @property
    def owed(self) -> bool:
        """Answers are queued or being written, and the peer may still take them."""
        ...
    @property
    def sending(self) -> bool: ...  # a write is under way
    @property
    def write_began(self) -> float: ...  # when the write under way (or the last) began

    def kill(self) -> None:
        """Cancel the connection's reader and writer; its handler then closes the stream
        and calls :meth:`ConnectionTable.remove`."""


C = TypeVar("C", bound=TrackedConnection)


def peer_source(stream: anyio.abc.ByteStream) -> str:
    """The address the per-source bound counts by: the peer's IP, or "local" for a
    stream that has none (in-memory streams in tests)."""
    try:
        address = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return "local"
    return str(address[0]) if isinstance(address, tuple) else str(address)


class ConnectionTable(Generic[C]):
    def __init__(self, limits: ConnectionLimits, log: logging.Logger) -> None:
        self.limits = limits
        # The door's own logger: a log line names the door it came from.
        self.log = log
        #: Connections whose handler is still running. An evicted one counts until its
        #: handler has closed the stream, so the file descriptors in use stay bounded.
        self.count = 0
        #: Connections that may still be evicted or swept.
        self.open: set[C] = set()
        self.per_source: dict[str, int] = {}

    def refusal(self, source: str) -> str:
        """Why a new connection from ``source`` cannot be taken (the bound, as
        ``key=value``), or "" if it can. At the connection limit, evicts first."""
        lim = self.limits
        if self.count >= lim.max_connections and not self.evict_idle():
            return f"max_connections={lim.max_connections}"
        if self.per_source.get(source, 0) >= lim.max_connections_per_source:
            return f"max_connections_per_source={lim.max_connections_per_source}"
        return ""

    def add(self, conn: C) -> None:
        self.count += 1
        self.per_source[conn.source] = self.per_source.get(conn.source, 0) + 1
        self.open.add(conn)

    def remove(self, conn: C) -> None:
        """From the connection's handler, once it is done (evicted or not)."""
        self.open.discard(conn)
        self.count -= 1
        left = self.per_source[conn.source] - 1
        if left:
            self.per_source[conn.source] = left
        else:
            del self.per_source[conn.source]

    def evict_idle(self) -> bool:
        """At the connection limit: close the longest-idle connection with nothing in
        flight and nothing owed, so a flood of idle sockets cannot lock new clients out.
        True if one was."""
        idle = [c for c in self.open if c.in_flight == 0 and not c.owed and not c.closing]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_read)
        self.log.info("connection limit: closing an idle connection from %s", victim.source)
        victim.kill()
        self.open.discard(victim)
        return True

    def sweep(self, now: float) -> None:
        """Close connections that sent no frame in time, went idle, or stopped taking
        the answers they are owed."""
        lim = self.limits
        for conn in list(self.open):
            if conn.closing or conn.in_flight:
                continue
            if conn.owed:
                # Not idle while its answers leave. A write not taken for idle_timeout_s
                # is a peer that stopped reading: without this a slot would be held for
                # ever by answers nobody takes.
                if conn.sending and now - conn.write_began > lim.idle_timeout_s:
                    self.log.info("closing a connection from %s: it took no answer for "
                                  "%.1f s", conn.source, lim.idle_timeout_s)
                    conn.kill()
                continue
            if not conn.framed and now - conn.opened > lim.handshake_timeout_s:
                self.log.info("closing a connection from %s: no frame within %.1f s",
                              conn.source, lim.handshake_timeout_s)
                conn.kill()
            elif now - conn.last_read > lim.idle_timeout_s:
                self.log.info("closing an idle connection from %s", conn.source)
                conn.kill()

    async def run_sweeper(self, clock: Callable[[], float]) -> NoReturn:
        """:meth:`sweep` every :data:`SWEEP_EVERY_S`, until cancelled."""
        while True:
            await anyio.sleep(SWEEP_EVERY_S)
            self.sweep(clock())
