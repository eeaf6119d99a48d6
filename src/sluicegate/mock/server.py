"""`MockUpstream`: the mock's listening socket and lifecycle, run on the caller's event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from sluicegate.mock.behaviour import MockBehaviour
from sluicegate.mock.connection import MockConnection
from sluicegate.mock.formats import wire_api
from sluicegate.mock.router import MockRouter
from sluicegate.mock.stats import MockStats


class MockUpstream:
    """A fast mock model server. `defaults` apply to every request; its `mock` object overrides them."""

    def __init__(self, *, defaults: MockBehaviour | None = None, wire_format: str = "openai") -> None:
        self._stats = MockStats()
        self._router = MockRouter(wire_api(wire_format), defaults or MockBehaviour(), self._stats)
        self._connections: set[MockConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 = an ephemeral port) and return the bound port."""
        if self._server is not None:
            raise RuntimeError("mock upstream already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: MockConnection(self._router, self._connections), host, port, backlog=1024
        )
        port_bound: int = self._server.sockets[0].getsockname()[1]
        return port_bound

    async def stop(self) -> None:
        """Stop listening and drop every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            connection.close()
        await server.wait_closed()

    @property
    def stats(self) -> dict[str, Any]:
        """The counters served at GET /_mock/stats."""
        return self._stats.snapshot()

    def request(self, tag: str) -> dict[str, Any] | None:
        """The record served at GET /_mock/requests/<tag>, or None."""
        record = self._stats.lookup(tag)
        return None if record is None else record.as_dict()

    def reset_stats(self) -> None:
        """What POST /_mock/reset does."""
        self._stats.reset()
