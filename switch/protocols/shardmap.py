"""The cluster's key -> shard map: one fixed function, shared by every entry point.

A cluster of N switch workers splits the idempotency key space into N shards; worker *i*
owns shard *i* and keeps its own journal. The owner of a key is

    shard_of(key, N) = crc32(utf-8 bytes of key) mod N

CRC-32 here is the common one (zlib, gzip, PNG; reflected polynomial 0xEDB88320), which is
also what HAProxy's ``crc32`` converter computes. That is the point: HAProxy routes an HTTP
request with ``use_backend shard%[req.hdr(Idempotency-Key),crc32,mod(N)]`` and our msgpack
client routes with this function, so the same key reaches the same worker (the same
idempotency index, the same journal) whichever door it comes in by. HAProxy hashes the
header's bytes as sent, so the HTTP worker hashes those bytes too (:func:`shard_of_bytes`);
a client sending the key as UTF-8 sends the bytes the msgpack door hashes. A worker that receives
a key it does not own refuses it before the core sees it: over msgpack with a
``moved`` reply naming the owner (as Redis Cluster does), over HTTP with 421.

The map is static on purpose. Consistent hashing would move a dead worker's keys to a live
one; a retry of a payment the dead worker had journaled would then be booked again on
another journal. With a static map a dead worker's shard is *unavailable* until it
restarts and replays its journal, and nothing is booked twice.

Sans-IO: no sockets here; addresses are plain ``host:port`` strings: exactly that, with
nothing around it (no space, no trailing newline), a port of 1-65535 written without
leading zeros (an address is compared as a string: a client finds the owner a ``moved``
names by it), and an IPv6 host in brackets (``[::1]:9000``; the last colon separates the
port). :func:`address_problem` says what is wrong with one that is not.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from typing import Annotated, Final

import msgspec

#: Shards in one cluster at most (a bound on config and on the published map).
MAX_SHARDS: Final = 1024

#: Ports an address may name.
MIN_PORT, MAX_PORT = 1, 65535
#: A host name is 255 characters at most (RFC 1035); an address adds ``:`` and the port.
MAX_HOST_CHARS: Final = 255
MAX_ADDRESS_CHARS: Final = MAX_HOST_CHARS + 1 + len(str(MAX_PORT))

#: A name or IPv4 address (no colon, bracket or whitespace), or an IPv6 address in brackets.
_HOST: Final = r"(?:[^\s:\[\]]+|\[[0-9A-Fa-f:.]+\])"
#: 1-65535, without leading zeros.
_PORT: Final = (r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
                r"|655[0-2][0-9]|6553[0-5])")
#: The whole text, anchored with ``\A`` and ``\Z``: msgspec checks a pattern with
#: ``re.search``, and ``$`` also matches before a trailing newline, so ``^...$`` took
#: ``"127.0.0.1:9000\n"``.
ADDRESS_PATTERN: Final = rf"\A{_HOST}:{_PORT}\Z"
_ADDRESS: Final = re.compile(ADDRESS_PATTERN)

Address = Annotated[str, msgspec.Meta(min_length=3, max_length=MAX_ADDRESS_CHARS,
                                      pattern=ADDRESS_PATTERN)]


def shard_of(key: str, shards: int) -> int:
    """The shard owning ``key`` among ``shards`` (crc32 of its UTF-8 bytes, mod N)."""
    return shard_of_bytes(key.encode(), shards)


def shard_of_bytes(raw: bytes, shards: int) -> int:
    """The shard owning the key whose bytes on the wire are ``raw``: what HAProxy
    computes over an ``Idempotency-Key`` header. An HTTP worker must hash the header's
    own bytes, not a re-encoding of them: its framework hands it the value decoded as
    latin-1, and re-encoded as UTF-8 a non-ASCII key hashed to another shard than the
    one HAProxy sent it to (which then answered 421)."""
    return zlib.crc32(raw) % shards if shards > 1 else 0


def address_problem(address: str) -> str | None:
    """What keeps ``address`` from being an :data:`Address`, in one line naming it; None
    when it is one."""
    if len(address) <= MAX_ADDRESS_CHARS and _ADDRESS.match(address) is not None:
        host = address.rpartition(":")[0]
        if not host.startswith("["):
            return None
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{address!r}: {host} is not an IPv6 address"
        return None
    shown = repr(address) if len(address) <= 80 else repr(address[:80]) + "..."
    if len(address) > MAX_ADDRESS_CHARS:
        return f"{shown}: longer than {MAX_ADDRESS_CHARS} characters"
    if any(c.isspace() for c in address):
        return f"{shown}: expected exactly host:port, without spaces or newlines"
    host, colon, port = address.rpartition(":")
    if colon and re.fullmatch(_HOST, host) and port.isascii() and port.isdigit():
        if not MIN_PORT <= int(port) <= MAX_PORT:
            return f"{shown}: port {int(port)} is not in {MIN_PORT}-{MAX_PORT}"
        return f"{shown}: port {port} has a leading zero; write it {int(port)}"
    return f"{shown}: expected host:port (an IPv6 host in brackets: [::1]:9000)"


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); an IPv6 host without its brackets, as a socket
    takes it (``[::1]:9000`` -> ``("::1", 9000)``). Raises ValueError naming the address
    and what is wrong with it (:func:`address_problem`)."""
    problem = address_problem(address)
    if problem is not None:
        raise ValueError(problem)
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def join_address(host: str, port: int) -> str:
    """(host, port) -> ``host:port``, the inverse of :func:`split_address`: an IPv6 host
    (a host with a colon) goes in brackets, ``("::1", 9000)`` -> ``[::1]:9000``, so the
    address a layout publishes is the one a ``moved`` names and a client looks up. A host
    already in brackets is kept as it is. Only formats: a map built from the result
    checks it (:func:`address_problem`)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class ShardMap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The published map: the msgpack address of each shard's owner, in shard order.

    ``addresses`` empty means "not sharded": every key belongs to the one switch.
    """

    addresses: Annotated[list[Address], msgspec.Meta(max_length=MAX_SHARDS)] = msgspec.field(
        default_factory=list)

    def __post_init__(self) -> None:
        # Decoding checks ADDRESS_PATTERN first; a map built in code (a cluster layout, a
        # client's copy of a published one) is checked here, with the same rule.
        for i, address in enumerate(self.addresses):
            problem = address_problem(address)
            if problem is not None:
                raise ValueError(f"addresses[{i}]: {problem}")

    @property
    def shards(self) -> int:
        return max(1, len(self.addresses))

    def owner(self, key: str) -> int:
        return shard_of(key, len(self.addresses))

    def address_of(self, key: str) -> str | None:
        """The owner's address, or None when not sharded."""
        if not self.addresses:
            return None
        return self.addresses[self.owner(key)]
