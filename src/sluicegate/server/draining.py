"""Draining one server process: track the requests in flight, stop taking new work, let it finish, end the rest.

A drain (SIGTERM, or the old app generation after a config reload) runs in this order:
1. `closing` is set: every response from now on carries `Connection: close`, so clients and load balancers move
   to other instances; for a shutdown `draining` is set too, and /healthz answers 503 {"status": "draining"}.
2. The listening sockets are closed: new connections are refused.
3. Requests in flight get up to `grace` seconds (server.shutdown_grace) to finish.
4. The rest are cancelled *for shutdown*: each handler task is marked, then cancelled. The gateway tells this
   apart from a client disconnect with `cancelled_for_shutdown(asyncio.current_task())` in its CancelledError
   handler and ends the stream with an error event (code "shutdown"). They get END_WAIT seconds to do so.
Only then does aiohttp's own cleanup run (closing idle connections, then the app's cleanup: gateway, state,
usage recorder, which flushes every usage record).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from sluicegate.gateway.shutdown import cancelled_for_shutdown, mark_cancelled_for_shutdown

log = logging.getLogger("sluicegate.server")

END_WAIT = 5.0
"""Seconds the requests cancelled for shutdown get to write their last event and account."""

HEARTBEAT_INTERVAL = 1.0
"""While draining, `heartbeat` runs at least this often (gunicorn kills a worker that stops reporting)."""

SHUTDOWN_CANCEL_MESSAGE = "sluicegate: shutdown grace period over"

__all__ = ["cancelled_for_shutdown"]  # re-exported: the marker itself lives below the gateway layer


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ShutdownCoordinator:
    """One per app generation. Install with `install(app)` before the app starts."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.closing = False
        self.draining = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._grace_over: asyncio.Event | None = None
        self._grace_ended = False

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def install(self, app: web.Application) -> None:
        app[DRAINING] = self
        app.middlewares.append(self.track)
        app.on_response_prepare.append(self._close_after_response)

    @web.middleware
    async def track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            return await handler(request)
        finally:
            self._in_flight.discard(task)

    async def _close_after_response(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.closing:
            # The Connection header is computed before this hook runs: set it as well as the keep-alive flag.
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    def end_grace(self) -> None:
        """No (more) waiting for requests in flight: a drain ends them now (a second SIGTERM, a quick shutdown)."""
        self._grace_ended = True
        if self._grace_over is not None:
            self._grace_over.set()

    async def drain(self, stop_accepting: Callable[[], Awaitable[None]], *, shutdown: bool = True,
                    heartbeat: Callable[[], None] | None = None) -> None:
        """Steps 1-4 of the module docstring. `shutdown=False` (a reload) keeps /healthz answering 200."""
        if self.closing:
            return
        self.closing = True
        self.draining = shutdown
        self._grace_over = asyncio.Event()
        if self._grace_ended:
            self._grace_over.set()
        await stop_accepting()
        if self._in_flight:
            log.info("draining: %d requests in flight, waiting up to %gs for them", len(self._in_flight), self.grace)
        loop = asyncio.get_running_loop()
        grace_timer = loop.call_later(self.grace, self._grace_over.set)
        try:
            await self._wait(self._grace_over, heartbeat)
        finally:
            grace_timer.cancel()
        if not self._in_flight:
            return
        log.warning("draining: grace period over; ending %d requests with a shutdown error", len(self._in_flight))
        for task in list(self._in_flight):
            mark_cancelled_for_shutdown(task)
            task.cancel(SHUTDOWN_CANCEL_MESSAGE)
        ended = asyncio.Event()
        end_timer = loop.call_later(END_WAIT, ended.set)
        try:
            await self._wait(ended, heartbeat)
        finally:
            end_timer.cancel()
        if self._in_flight:
            log.warning("draining: %d requests did not end within %gs", len(self._in_flight), END_WAIT)

    async def _wait(self, give_up: asyncio.Event, heartbeat: Callable[[], None] | None) -> None:
        """Until no request is in flight or `give_up` is set, calling `heartbeat` every HEARTBEAT_INTERVAL."""
        stop = asyncio.ensure_future(give_up.wait())
        try:
            while self._in_flight and not give_up.is_set():
                if heartbeat is not None:
                    heartbeat()
                await asyncio.wait([*self._in_flight, stop], timeout=HEARTBEAT_INTERVAL,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()


DRAINING = web.AppKey("draining", ShutdownCoordinator)


class DrainingAppRunner(web.AppRunner):
    """An AppRunner whose cleanup drains first. `heartbeat` runs while it waits (gunicorn's worker notify)."""

    def __init__(self, app: web.Application, coordinator: ShutdownCoordinator, *,
                 heartbeat: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.coordinator = coordinator
        self.heartbeat = heartbeat
        self.replaced = False  # True: a reload replaces this app generation; the process keeps serving

    async def cleanup(self) -> None:
        await self.coordinator.drain(self._stop_sites, shutdown=not self.replaced, heartbeat=self.heartbeat)
        await super().cleanup()

    async def _stop_sites(self) -> None:
        for site in list(self.sites):
            await site.stop()
