"""One upstream HTTP/1.1 connection: send a request, parse the response with httptools (llhttp), hand the body on.

The body can be taken in two ways, one after the other:

- `read()` / `read_all()` (coroutines): used while an attempt waits for its first event or reads a whole
  non-streaming body. Memory bound: reading from the socket pauses once `read_size` bytes wait unread.
- `set_sink(sink)`: from then on every socket read goes from uvloop's read callback straight through the parser to
  `sink.body()`: no coroutine, future or task per event. This is the streaming relay's hot path. Each callback
  handles at most one read of `read_size` bytes (a `BufferedProtocol` reads into one preallocated buffer), which is
  what bounds a stream's turn on the event loop.

Reading pauses and resumes only through `pause_reading()` / `resume_reading()` (backpressure from the client, rate
caps); the kernel's receive buffer then fills and TCP pushes back on the upstream.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from sluicegate.upstream.errors import UpstreamClosed, UpstreamError, UpstreamProtocolError


class BodySink(Protocol):
    """Receives a streaming body from the read callback. None of these may raise."""

    def body(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def lost(self, exc: UpstreamError) -> None: ...


class _NoCallbacks:
    pass


_DETACHED_PARSER = httptools.HttpResponseParser(_NoCallbacks())  # in place of a closed connection's parser


class UpstreamConnection(asyncio.BufferedProtocol):
    def __init__(self, key: tuple[str, str, int], read_size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key  # (scheme, host, port): the pool this connection returns to
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle = False
        self.idle_handle: asyncio.TimerHandle | None = None
        self.on_lost: Callable[[UpstreamConnection], None] | None = None
        self._loop = loop
        self._read_size = read_size
        self._view = memoryview(bytearray(read_size))
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names; a repeated header keeps its last value
        self._parts: list[bytes] = []  # body bytes parsed but not yet handed on
        self._complete = False
        self._keep_alive = False
        self._received = False
        self._length_known = False
        self._interim = False
        self._error: UpstreamError | None = None
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: BodySink | None = None
        self._paused = False

    # --- asyncio protocol ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self.idle or self._complete:
            # Bytes nobody asked for (on an idle keep-alive connection, or after the response ended): the
            # connection's state is unknown, so it is not reused.
            self._keep_alive = False
            self.close()
            return
        self._received = True
        try:
            self._parser.feed_data(self._view[:nbytes])
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"The upstream's response is not valid HTTP/1.1: {exc}"))
            self.close()
            return
        sink = self._sink
        if sink is not None:
            parts = self._parts
            if parts:
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                parts.clear()
                sink.body(data)
            if self._complete and self._sink is sink:
                self._sink = None
                sink.end()
        elif self._parts or self._complete:
            if sum(map(len, self._parts)) >= self._read_size:
                self.pause_reading()  # resumed by read(): the coroutine side holds at most read_size unread
            self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost decides what the end means

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._lost()
        finally:
            # The parser and the transport point back at this protocol: let go of them, so a closed connection
            # (and the failure it may hold) is freed by reference counting, not by a pass of the cyclic GC.
            self._parser = _DETACHED_PARSER
            self.transport = None

    def _lost(self) -> None:
        self.closed = True
        if self.on_lost is not None:
            self.on_lost(self)
        if self._complete or self._error is not None:
            return
        if self._head is None:
            return  # idle: nobody is waiting for anything
        if not self._head.done():
            self._fail(UpstreamClosed("The upstream closed the connection before responding.",
                                      before_response=not self._received))
        elif not self._length_known:
            self._message_complete()  # no Content-Length, not chunked: the body ends with the connection
            self._keep_alive = False
            sink = self._sink
            if sink is not None:
                self._sink = None
                sink.end()
            else:
                self._wake()
        else:
            self._fail(UpstreamClosed("The upstream closed the connection in the middle of the response.",
                                      before_response=False))

    # --- httptools callbacks ------------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True  # 100 Continue, 103 Early Hints: the real response follows on the same stream
            self.headers = {}
            return
        self.status = status
        self._length_known = "content-length" in self.headers or "chunked" in self.headers.get(
            "transfer-encoding", "").lower()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._parts.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._message_complete()

    def _message_complete(self) -> None:
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive() if not self.closed else False
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    # --- the request --------------------------------------------------------------------------------------------
    def send(self, request: bytes) -> None:
        """Write a whole request (head and body). The response head arrives via `response_head()`."""
        assert self.transport is not None and not self.closed
        self.idle = False
        self._head = self._loop.create_future()
        self.transport.write(request)

    async def response_head(self) -> None:
        """Wait until the status and headers are in. Raises UpstreamError."""
        assert self._head is not None
        await self._head
        if self._error is not None and not self.status:
            raise self._raisable()

    # --- reading the body as a coroutine ------------------------------------------------------------------------
    async def read(self) -> bytes:
        """The body bytes parsed so far (waiting for some), or b"" at the end. Raises UpstreamError."""
        while not self._parts:
            if self._error is not None:
                raise self._raisable()
            if self._complete:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._take_parts()
        self.resume_reading()
        return data

    async def read_all(self, limit: int | None = None) -> bytes:
        """The whole body, or its first `limit` bytes (the rest is left unread: close, don't reuse)."""
        pieces: list[bytes] = []
        size = 0
        while limit is None or size < limit:
            data = await self.read()
            if not data:
                break
            pieces.append(data)
            size += len(data)
        body = b"".join(pieces)
        return body if limit is None else body[:limit]

    def _take_parts(self) -> bytes:
        # buffer_updated() does the same inline: it runs once per streamed read.
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        return data

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- reading the body through a sink (the streaming relay) --------------------------------------------------
    def set_sink(self, sink: BodySink | None) -> None:
        """Hand every further body read to `sink`, starting with anything already parsed."""
        self._sink = sink
        if sink is None:
            return
        self.resume_reading()  # before delivering: the sink may pause again at once
        if self._parts:
            sink.body(self._take_parts())
        if self._sink is not sink:
            return
        if self._error is not None:
            self._sink = None
            sink.lost(self._raisable())
        elif self._complete:
            self._sink = None
            sink.end()

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # --- end of use ---------------------------------------------------------------------------------------------
    @property
    def reusable(self) -> bool:
        """The response was read to its end and both sides agreed to keep the connection."""
        return self._complete and self._keep_alive and not self.closed and self._error is None

    def park(self) -> None:
        """Ready for the next request (the pool holds it idle meanwhile). Reading is switched back on: the last
        read may have paused it (backpressure, the relay queue's bound), and an idle connection must see the upstream
        close it."""
        self.resume_reading()
        self._reset()
        self.idle = True

    def close(self) -> None:
        """Drop the connection (the upstream sees it closed at once: that is how it learns nobody reads)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _fail(self, exc: UpstreamError) -> None:
        if self._error is not None:
            return
        self._error = exc
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)  # response_head() raises; a future holding the exception would be a cycle
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.lost(self._raisable())
        self._wake()

    def _raisable(self) -> UpstreamError:
        """A copy of the failure to raise or hand on. Raising the stored one would give it a traceback whose
        frames hold this connection, which holds it: a reference cycle that keeps the request's objects alive
        until a GC pass."""
        assert self._error is not None
        return copy.copy(self._error)
