"""A shard's address is exactly ``host:port``: a port of 1-65535 and nothing around it.

The pattern was ``^[^\\s:]+:[0-9]{1,5}$``, which msgspec checks with ``re.search``: ``$``
matches before a trailing newline, so ``"127.0.0.1:9000\\n"`` was a valid address, and so
were ports 0 and 99999. It also refused every IPv6 host, bracketed or not.
"""

from __future__ import annotations

import re

import msgspec
import pytest

from switch.protocols.shardmap import (
    ADDRESS_PATTERN,
    MAX_ADDRESS_CHARS,
    ShardMap,
    address_problem,
    split_address,
)
from switch.serve.config import ClusterConfig, ConfigError, parse_config

GOOD = {
    "127.0.0.1:9000": ("127.0.0.1", 9000),
    "h:1": ("h", 1),
    "switch-0.example.net:65535": ("switch-0.example.net", 65535),
    "[::1]:9000": ("::1", 9000),
    "[2001:db8::7]:7100": ("2001:db8::7", 7100),
    "[::ffff:10.0.0.1]:80": ("::ffff:10.0.0.1", 80),
    "h" * 255 + ":65535": ("h" * 255, 65535),
}

#: Each bad address and a piece of the one-line reason given for it.
BAD = {
    "127.0.0.1:9000\n": "without spaces or newlines",
    "127.0.0.1:9000\r\n": "without spaces or newlines",
    " 127.0.0.1:9000": "without spaces or newlines",
    "127.0.0.1: 9000": "without spaces or newlines",
    "h:0": "port 0 is not in 1-65535",
    "h:65536": "port 65536 is not in 1-65535",
    "h:99999": "port 99999 is not in 1-65535",
    "h:123456": "port 123456 is not in 1-65535",
    "h:09000": "port 09000 has a leading zero; write it 9000",
    "::1:9000": "an IPv6 host in brackets",
    "[::1]9000": "an IPv6 host in brackets",
    "[:::]:9000": "[:::] is not an IPv6 address",
    "h:": "expected host:port",
    ":9000": "expected host:port",
    "h:90x": "expected host:port",
    "h:\u0663": "expected host:port",  # a non-ASCII digit
    "h" * 257 + ":9000": f"longer than {MAX_ADDRESS_CHARS} characters",
}


@pytest.mark.parametrize("address", list(GOOD), ids=lambda a: a[:40])
def test_a_good_address_is_taken_everywhere(address: str) -> None:
    assert address_problem(address) is None
    assert split_address(address) == GOOD[address]
    assert msgspec.convert({"addresses": [address]}, ShardMap).addresses == [address]
    assert msgspec.convert({"shards": [address]}, ClusterConfig).shards == [address]
    assert ShardMap([address]).addresses == [address]


@pytest.mark.parametrize("address", list(BAD), ids=lambda a: repr(a)[:40])
def test_a_bad_address_is_refused_everywhere_in_one_line_naming_it(address: str) -> None:
    problem = address_problem(address)
    assert problem is not None and BAD[address] in problem
    assert "\n" not in problem and problem.startswith(repr(address)[:40])
    with pytest.raises(ValueError, match=re.escape(problem)):
        split_address(address)
    with pytest.raises(ValueError, match=r"^addresses\[1\]: " + re.escape(problem)):
        ShardMap(["h:1", address])  # a map built in code (a layout, a published map)
    with pytest.raises(msgspec.ValidationError, match=r"addresses\[0\]"):
        msgspec.convert({"addresses": [address]}, ShardMap)
    if "[:::]" not in address:  # the pattern checks the form, not IPv6 arithmetic
        with pytest.raises(msgspec.ValidationError, match=r"shards\[0\]"):
            msgspec.convert({"shards": [address]}, ClusterConfig)


@pytest.mark.parametrize("toml", ['"""127.0.0.1:7101\n"""', '"127.0.0.1:0"', '"127.0.0.1:99999"'])
def test_the_config_file_refuses_the_address_naming_the_key(toml: str) -> None:
    text = f'seed = 1\n[cluster]\nshard = 0\nshards = ["127.0.0.1:7100", {toml}]\n'
    with pytest.raises(ConfigError, match=r"cluster\.shards\[1\]: Expected `str` matching"):
        parse_config(text)


def test_the_config_file_takes_an_ipv6_shard() -> None:
    text = 'seed = 1\n[cluster]\nshard = 0\nshards = ["[::1]:7100", "[::1]:7101"]\n'
    cluster = parse_config(text).cluster
    assert [split_address(a) for a in cluster.map.addresses] == [("::1", 7100), ("::1", 7101)]


@pytest.mark.parametrize("address", [*GOOD, *BAD], ids=lambda a: repr(a)[:40])
def test_the_pattern_and_the_explanation_agree(address: str) -> None:
    # One rule: what the decoders check (the pattern, with msgspec's re.search) is what
    # address_problem explains, IPv6 arithmetic aside.
    by_pattern = (re.search(ADDRESS_PATTERN, address) is not None
                  and len(address) <= MAX_ADDRESS_CHARS)
    assert by_pattern == (address_problem(address) is None or "[:::]" in address)
