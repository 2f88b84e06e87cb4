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

Sans-IO: no sockets here; addresses are plain ``host:port`` strings.
"""

from __future__ import annotations

import zlib
from typing import Annotated, Final

import msgspec

#: Shards in one cluster at most (a bound on config and on the published map).
MAX_SHARDS: Final = 1024

Address = Annotated[str, msgspec.Meta(min_length=3, max_length=261,
                                      pattern=r"^[^\s:]+:[0-9]{1,5}$")]


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


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host, int(port)


class ShardMap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The published map: the msgpack address of each shard's owner, in shard order.

    ``addresses`` empty means "not sharded": every key belongs to the one switch.
    """

    addresses: Annotated[list[Address], msgspec.Meta(max_length=MAX_SHARDS)] = msgspec.field(
        default_factory=list)

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
