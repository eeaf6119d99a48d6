"""Serve one aiohttp handler for every POST on a free loopback port and print the ready line `e2e.py` waits for
(shared by the featureless comparison proxies)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web


async def serve_forever(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"sluicegate listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()
