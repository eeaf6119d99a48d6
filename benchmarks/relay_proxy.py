"""The floor of the gateway's own design: aiohttp server + sluicegate's upstream client and callback relay, with no
features (no codec, deadlines, metrics, admission, usage). `benchmarks/e2e.py --relay-proxy` runs it in place of
the gateway; the gap between it and sluicegate is what the features cost, the gap between it and
`bare_proxy.py` is what the relay design saves over aiohttp's client reader and writer.

    .venv/bin/python benchmarks/relay_proxy.py http://127.0.0.1:9000   # prints "sluicegate listening on URL"
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop
from aiohttp import web

from proxy_server import serve_forever  # benchmarks/ is the script's directory
from sluicegate.upstream.client import UpstreamClient
from sluicegate.upstream.errors import UpstreamError


class ChunkedRelay:
    """Each upstream read goes to the client transport as one HTTP/1.1 chunk, from the read callback."""

    def __init__(self, transport: asyncio.Transport, done: asyncio.Future[None]) -> None:
        self.transport = transport
        self.done = done

    def body(self, data: bytes) -> None:
        self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def lost(self, exc: UpstreamError) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def main(upstream: str) -> None:
    client = UpstreamClient(read_size=4096, socket_buffer=0)
    loop = asyncio.get_running_loop()

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        conn = await client.post(f"{upstream}{request.path}", {"Content-Type": "application/json"}, body,
                                 connect_timeout=10)
        response = web.StreamResponse(status=conn.status, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        done: asyncio.Future[None] = loop.create_future()
        try:
            conn.set_sink(ChunkedRelay(cast(asyncio.Transport, request.transport), done))
            await done
        finally:
            conn.set_sink(None)
            client.release(conn, reuse=done.done() and not done.cancelled() and done.exception() is None)
        await response.write_eof()
        return response

    await serve_forever(proxy)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
