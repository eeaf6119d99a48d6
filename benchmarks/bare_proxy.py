"""The floor we compare against: a bare aiohttp pass-through proxy (server + client, uvloop), no features at all.

It forwards the request body to the upstream and copies every read to the client, nothing else: no framing, no
deadlines, no metrics, no admission. `benchmarks/e2e.py --bare-proxy` runs it in place of the gateway.

    .venv/bin/python benchmarks/bare_proxy.py http://127.0.0.1:9000   # prints "sluicegate listening on URL"
"""

from __future__ import annotations

import sys

import aiohttp
import uvloop
from aiohttp import web

from proxy_server import serve_forever  # benchmarks/ is the script's directory


async def main(upstream: str) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session.post(f"{upstream}{request.path}", data=body,
                                headers={"Content-Type": "application/json"}) as upstream_response:
            response = web.StreamResponse(status=upstream_response.status,
                                          headers={"Content-Type": upstream_response.content_type})
            await response.prepare(request)
            while data := await upstream_response.content.readany():
                await response.write(data)
            await response.write_eof()
            return response

    await serve_forever(proxy)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
