"""The leanest Python relay we could write: no web framework and no features. A raw `asyncio.Protocol` server
(httptools parses the requests) in front of sluicegate's upstream client and callback relay. `benchmarks/e2e.py
--raw-relay-proxy` runs it in place of the gateway, to show what a Python proxy costs per request once aiohttp's
server and every gateway feature are gone (docs/benchmarks.md, "What bounds a burst").

Measurement only: keep-alive, POST with a Content-Length body, a 200 chunked response; no error handling, no
backpressure, no limits.

    .venv/bin/python benchmarks/raw_relay_proxy.py http://127.0.0.1:9000   # prints "sluicegate listening on URL"
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import httptools
import uvloop

from relay_proxy import ChunkedRelay  # benchmarks/ is the script's directory
from sluicegate.upstream.client import UpstreamClient

RESPONSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class RawRelayConnection(asyncio.Protocol):
    def __init__(self, client: UpstreamClient, upstream: str) -> None:
        self._client = client
        self._upstream = upstream
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._loop.create_task(self._relay(self._url.decode("latin-1"), b"".join(self._body)))

    async def _relay(self, path: str, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        conn = await self._client.post(f"{self._upstream}{path}", {"Content-Type": "application/json"}, body,
                                       connect_timeout=10)
        done: asyncio.Future[None] = self._loop.create_future()
        transport.write(RESPONSE_HEAD)
        try:
            conn.set_sink(ChunkedRelay(transport, done))
            await done
        finally:
            conn.set_sink(None)
            self._client.release(conn, reuse=done.done() and not done.cancelled() and done.exception() is None)
        transport.write(b"0\r\n\r\n")


async def main(upstream: str) -> None:
    client = UpstreamClient(read_size=4096, socket_buffer=0)
    server = await asyncio.get_running_loop().create_server(lambda: RawRelayConnection(client, upstream),
                                                            "127.0.0.1", 0)
    print(f"sluicegate listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
