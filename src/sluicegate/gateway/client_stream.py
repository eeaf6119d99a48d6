"""What the gateway needs from the client connection; the server layer implements it over aiohttp."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class ClientGone(Exception):
    """A write to the client failed because the client has gone away."""


class ClientStream(Protocol):
    committed: bool  # response headers have been sent: errors from now on are events, not statuses
    bytes_sent: int
    stalled_since: float  # loop time a write began waiting for the client to drain; 0.0 when not waiting
    headers: dict[str, str]  # response headers; may be added to until the first write
    on_stall: Callable[[float], None] | None  # called with the loop time when a write starts waiting to drain

    async def write(self, data: bytes) -> None:
        """Write bytes, committing the response first if needed; waits only while the client is not draining.
        Raises ClientGone."""
        ...

    def send(self, data: bytes) -> bool:
        """Write bytes now, without waiting (the response is committed: the first write went through `write`).
        Returns True when the client is not draining: write nothing more until `drain()` returns. Raises
        ClientGone."""
        ...

    async def drain(self) -> None:
        """Wait until the client drains (sets `stalled_since` and calls `on_stall` meanwhile). Raises ClientGone."""
        ...

    def digest(self) -> str:
        """Hex SHA-256 of every body byte written so far (the client can verify what it received)."""
        ...

    def heartbeat(self) -> None:
        """Write an SSE keep-alive comment without waiting (skipped while the client is not draining)."""
        ...

    async def end(self, final: bytes = b"", *, clean: bool = True) -> None:
        """Finish the response: write `final` and the end of the body. clean=False drops the connection instead
        (the client stopped reading; nothing more can be delivered)."""
        ...
