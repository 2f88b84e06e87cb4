"""A bare framed echo server: the same transport and framing as the switch, no pipeline.

It reads 64 KiB at a time, parses every frame, decodes just enough to learn the request
id, and answers with a fixed approved result, batching replies per read. Whatever the
switch costs beyond this is the price of the payment pipeline itself.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import anyio
import anyio.abc
import msgspec

from switch.model import Result, Status
from switch.protocols.wire import FrameDecoder, Reply, ReplyEncoder


class _Id(msgspec.Struct):
    id: int


_decode_id = msgspec.msgpack.Decoder(_Id).decode
_RESULT = Result("P0-0", Status.APPROVED, "00", "ECHO", "echo")


async def handle(stream: anyio.abc.ByteStream) -> None:
    decoder = FrameDecoder()
    out = ReplyEncoder()
    try:
        while True:
            for payload in decoder.feed(await stream.receive(65536)):
                out.add(Reply(_decode_id(payload).id, _RESULT))
            if len(out):
                await stream.send(out.take())
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


async def main(port: int, ready_file: str) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    tmp = Path(ready_file + ".tmp")
    tmp.write_text(json.dumps({"port": bound, "pid": os.getpid(), "admin_port": 0}))
    tmp.replace(ready_file)
    await listener.serve(handle)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    anyio.run(main, args.port, args.ready_file, backend="asyncio",
              backend_options={"use_uvloop": True})
