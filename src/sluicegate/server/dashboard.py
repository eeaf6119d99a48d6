"""The live dashboard: `GET /dashboard` (one static page) and `GET /dashboard/events` (its SSE feed).

One shared ticker builds one snapshot per second for every viewer, and runs only while someone watches. A viewer
only ever gets the latest frame: one that reads slowly skips frames instead of queueing them, and one that stops
reading for WRITE_STALL_SECONDS is cut off, so a viewer costs at most one frame of memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from importlib import resources

import msgspec
from aiohttp import web

from sluicegate.observe.live import LiveStats

TICK_SECONDS = 1.0
WRITE_STALL_SECONDS = 10.0
PAGE_RESOURCE = ("sluicegate.server", "static/dashboard.html")

log = logging.getLogger("sluicegate.dashboard")


def _load_page() -> bytes:
    package, path = PAGE_RESOURCE
    return resources.files(package).joinpath(path).read_bytes()


class SnapshotFeed:
    """Publishes one encoded snapshot per tick to all connected viewers."""

    def __init__(self, stats_key: web.AppKey[LiveStats], tick: float = TICK_SECONDS) -> None:
        self._stats_key = stats_key
        self._tick = tick
        self._encoder = msgspec.json.Encoder()
        self.viewers = 0
        self._frame: bytes | None = None  # the latest `data: ...` event, None while no ticker runs
        self._published = asyncio.Event()  # set (and replaced) at each new frame
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self._closed:
            raise web.HTTPServiceUnavailable()
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        self.viewers += 1
        try:
            self._ensure_ticker(request.app)
            await self._stream_to(request, response)
        finally:
            self.viewers -= 1
        return response

    async def _stream_to(self, request: web.Request, response: web.StreamResponse) -> None:
        sent: bytes | None = None
        while not self._closed:
            frame = self._frame
            if frame is None or frame is sent:
                await self._published.wait()
                continue
            try:
                async with asyncio.timeout(WRITE_STALL_SECONDS):
                    await response.write(frame)
            except ConnectionError:
                return  # the viewer went away
            except TimeoutError:
                if request.transport is not None:
                    request.transport.abort()
                return
            sent = frame

    def _ensure_ticker(self, app: web.Application) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._run_ticker(app))

    async def _run_ticker(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        failing = False
        try:
            while self.viewers > 0 and not self._closed:
                try:
                    self._publish(self._encode(app[self._stats_key]))
                    failing = False
                except Exception:
                    if not failing:  # log a run of failures once, not every second
                        log.exception("dashboard snapshot failed")
                    failing = True
                next_tick += self._tick
                delay = next_tick - loop.time()
                if delay < 0:  # fell behind (a busy loop): skip ticks rather than burst
                    next_tick = loop.time() + self._tick
                    delay = self._tick
                await asyncio.sleep(delay)
        finally:
            self._frame = None

    def _encode(self, stats: LiveStats) -> bytes:
        payload = {"worker_pid": os.getpid(), "time": time.time(), **stats.snapshot(stats.clock())}
        return b"data: " + self._encoder.encode(payload) + b"\n\n"

    def _publish(self, frame: bytes) -> None:
        self._frame = frame
        published, self._published = self._published, asyncio.Event()
        published.set()

    async def close(self, app: web.Application | None = None) -> None:
        """Ends every open feed (so shutdown does not wait for viewers) and stops the ticker."""
        self._closed = True
        self._published.set()
        if self._ticker is not None:
            self._ticker.cancel()


def add_dashboard_routes(app: web.Application, stats_key: web.AppKey[LiveStats]) -> None:
    """Registers GET /dashboard and GET /dashboard/events; `app[stats_key]` may be set later (e.g. at startup)."""
    page = _load_page()
    feed = SnapshotFeed(stats_key)

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/dashboard/events", feed.handle)
    app.on_shutdown.append(feed.close)
