"""A test upstream that replays a recorded provider stream byte for byte, cut into pieces of random sizes with
tiny pauses, so the gateway sees realistic reads (events split mid-line, several events per read)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from aiohttp import web

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


class ReplayUpstream:
    def __init__(self, seed: int = 0) -> None:
        self.body = b""
        self.content_type = "text/event-stream"
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": self.content_type})
        await response.prepare(request)
        body = self.body
        pos = 0
        while pos < len(body):
            size = self._rng.randint(1, 300)
            await response.write(body[pos : pos + size])
            pos += size
            await asyncio.sleep(self._rng.choice((0, 0, 0.001)))
        await response.write_eof()
        return response


class ThreadedReplayUpstream(ReplayUpstream):
    """The same upstream on its own event loop in a thread, so sync and module-scoped fixtures can use it."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def start_sync(self) -> str:
        return asyncio.run_coroutine_threadsafe(self.start(), self._loop).result(10)

    def stop_sync(self) -> None:
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
