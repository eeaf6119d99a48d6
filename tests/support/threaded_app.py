"""An aiohttp application served on 127.0.0.1 from its own event loop in a thread, for synchronous tests and
module-scoped fixtures (a small upstream or service a test scripts itself)."""

from __future__ import annotations

import asyncio
import ssl
import threading

from aiohttp import web


class ThreadedApp:
    def __init__(self, app: web.Application, tls: ssl.SSLContext | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        self._tls = tls
        self.port: int = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._tls)
        await site.start()
        return int(self._runner.addresses[0][1])

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
