"""One client connection of the mock: httptools parsing, HTTP/1.1 keep-alive, flow control, peer close.

Requests are answered in order; a pipelined request waits for the one before it. The connection keeps
reading while it answers, so a peer that goes away is noticed at once (also during a stall).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import socket
import struct
from collections.abc import Callable
from typing import Final, cast

import httptools
import msgspec

from sluicegate.mock.http import full_response
from sluicegate.mock.playback import Playback

MAX_BODY_BYTES: Final = 64 * 1024 * 1024
MAX_QUEUED_REQUESTS: Final = 32  # pipelined requests beyond this pause reading
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class IncomingRequest:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]  # names lowercased, in arrival order
    body: bytes
    keep_alive: bool


Dispatch = Callable[["MockConnection", IncomingRequest], Playback]


class MockConnection(asyncio.Protocol):
    """An `asyncio.Protocol` and the `ResponseSink` its playbacks write to."""

    def __init__(self, dispatch: Dispatch, registry: set[MockConnection]) -> None:
        self.loop = asyncio.get_running_loop()
        self.paused = False
        self._dispatch = dispatch
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._current: Playback | None = None
        self._queue: collections.deque[Playback] = collections.deque()
        self._reading_paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self._registry.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError:
            self._reject(400, "malformed HTTP request")
        except _BodyTooLarge:
            self._reject(413, f"request body exceeds {MAX_BODY_BYTES} bytes")

    def eof_received(self) -> bool:
        return False  # a half-closed peer is treated as gone

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        self._transport = None
        pending = [self._current, *self._queue] if self._current else list(self._queue)
        self._current = None
        self._queue.clear()
        for playback in pending:
            playback.peer_closed()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._current is not None:
            self._current.resume()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name == "expect" and value.lower() == "100-continue":
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        path, _, query = self._url.decode("latin-1").partition("?")
        request = IncomingRequest(
            method=self._parser.get_method().decode("latin-1"),
            path=path,
            query=query,
            headers=self._headers,
            body=b"".join(self._body),
            keep_alive=self._parser.should_keep_alive(),
        )
        self._body = []
        try:
            playback = self._dispatch(self, request)
        except Exception:  # a bug in the mock must not take the whole server down
            _log.exception("mock upstream failed to answer %s %s", request.method, request.path)
            self._reject(500, "mock upstream internal error")
            return
        if self._current is None:
            self._current = playback
            playback.start()
        else:
            self._queue.append(playback)
            if len(self._queue) >= MAX_QUEUED_REQUESTS and self._transport is not None:
                self._transport.pause_reading()
                self._reading_paused = True

    # ResponseSink

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def reset(self) -> None:
        transport = self._transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone: nothing left to reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    def response_done(self, playback: Playback) -> None:
        if playback is not self._current:
            return
        self._current = None
        if not playback.keep_alive:
            if self._transport is not None:
                self._transport.close()
            return
        if self._queue:
            self.loop.call_soon(self._start_next)

    def _start_next(self) -> None:
        if self._current is not None or not self._queue or self._transport is None:
            return
        self._current = self._queue.popleft()
        if self._reading_paused and len(self._queue) < MAX_QUEUED_REQUESTS // 2:
            self._reading_paused = False
            self._transport.resume_reading()
        self._current.start()

    # lifecycle

    def close(self) -> None:
        """Server shutdown: drop everything without recording outcomes."""
        for playback in [self._current, *self._queue]:
            if playback is not None:
                playback.abandon()
        self._current = None
        self._queue.clear()
        if self._transport is not None:
            self._transport.abort()

    def _reject(self, status: int, message: str) -> None:
        """Answer an unparseable request and close; mid-response there is no clean way to answer."""
        if self._transport is None:
            return
        if self._current is not None:
            self._transport.abort()
            return
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
        self.write(full_response(status, msgspec.json.encode({"error": error}), keep_alive=False))
        self._transport.close()


class _BodyTooLarge(Exception):
    pass
