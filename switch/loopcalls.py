"""The running event loop's own call-soon functions, bound once (asyncio or trio).

Why not ``anyio.to_thread.run_sync`` and ``anyio.from_thread``: a round trip through them
costs a cancel scope, a future, checkpoints and a worker pool's queue, ~4x the CPU of a
plain thread that reports back with the loop's thread-safe call (asyncio+uvloop 27 us
against 6 us, trio 53 against 17: bench/bench_thread_hop.py). The journal's writer thread
reports every commit this way; at low rates that is two hops per payment.

Both backends offer the same shape, ``call(fn, *args)``, and both run ``fn`` on the loop's
thread at its next iteration. ``fn`` must not raise: on trio an exception there ends the
run. Callers catch and log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sniffio

Call = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class LoopCalls:
    #: From the loop's own thread: run ``fn(*args)`` soon, after the current step.
    soon: Call
    #: From any other thread: the same, waking the loop if it sleeps.
    from_thread: Call


def loop_calls() -> LoopCalls:
    """The running loop's call-soon functions. Must be called inside the loop."""
    library = sniffio.current_async_library()
    if library == "asyncio":
        loop = asyncio.get_running_loop()
        return LoopCalls(loop.call_soon, loop.call_soon_threadsafe)
    if library == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        return LoopCalls(token.run_sync_soon, token.run_sync_soon)
    raise RuntimeError(f"unsupported async library {library!r}")
