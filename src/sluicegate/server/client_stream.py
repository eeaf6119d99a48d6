"""The client side of a stream over aiohttp: commit headers with the first bytes, write without buffering,
wait only while the client is not draining (and say since when, for the write-stall deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Mapping

from aiohttp import ClientConnectionResetError, web
from aiohttp.http_writer import StreamWriter

from sluicegate.gateway.client_stream import ClientGone
from sluicegate.wire.sse import PING_COMMENT

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class _EventStreamResponse(web.StreamResponse):
    # Hold the headers until the first bytes of the body so that headers + first event leave in one write (one
    # packet, one syscall). aiohttp's own web.Response does the same.
    _send_headers_immediately = False


class AiohttpClientStream:
    __slots__ = (
        "_chunked",
        "_end_timeout",
        "_loop",
        "_prepare",
        "_protocol",
        "_request",
        "_sha",
        "_transport",
        "_write_buffer_high",
        "_writer",
        "bytes_sent",
        "committed",
        "headers",
        "on_stall",
        "response",
        "stalled_since",
    )

    def __init__(self, request: web.Request, headers: Mapping[str, str], *, write_buffer_high: int,
                 end_timeout: float) -> None:
        self._request = request
        self._protocol = request.protocol
        self._loop = asyncio.get_running_loop()
        self._writer: StreamWriter | None = None
        self._transport: asyncio.Transport | None = None  # set once the response is prepared (committed)
        self._chunked = True
        self._prepare: asyncio.Task[StreamWriter] | None = None
        self._write_buffer_high = write_buffer_high
        self._end_timeout = end_timeout
        self.headers = {**SSE_HEADERS, **headers}  # may be added to until the first write
        self.response: web.StreamResponse = _EventStreamResponse(status=200)
        self.committed = False
        self.bytes_sent = 0
        self.stalled_since = 0.0
        self.on_stall: Callable[[float], None] | None = None
        self._sha = hashlib.sha256()

    async def _do_prepare(self) -> StreamWriter:
        self.response.headers.update(self.headers)
        writer = await self.response.prepare(self._request)
        assert isinstance(writer, StreamWriter)  # write(drain=False) is StreamWriter's, not the ABC's
        transport = self._request.transport
        if transport is not None:
            # A small high-water mark keeps memory per stream small; the kernel's socket buffer does the rest.
            transport.set_write_buffer_limits(high=self._write_buffer_high)
            self._transport = transport
        self._chunked = writer.chunked
        self._writer = writer
        return writer

    def _commit(self) -> asyncio.Task[StreamWriter]:
        """Commit from a heartbeat (a timer callback, which cannot await): prepare in a task."""
        self.committed = True
        self._prepare = self._loop.create_task(self._do_prepare())
        return self._prepare

    async def _prepared(self) -> StreamWriter:
        if self._prepare is not None:
            return await self._prepare
        self.committed = True
        return await self._do_prepare()

    async def write(self, data: bytes) -> None:
        writer = self._writer
        try:
            if writer is None:
                writer = await self._prepared()
            await writer.write(data, drain=False)
        except (ConnectionError, ClientConnectionResetError, RuntimeError) as exc:
            raise ClientGone(str(exc)) from None
        self.bytes_sent += len(data)
        self._sha.update(data)
        await self.drain()

    def send(self, data: bytes) -> bool:
        # The hot path: straight to the transport in HTTP/1.1 chunked framing (aiohttp's writer would add two
        # coroutine calls per event). aiohttp's writer still ends the body (write_eof) and owns keep-alive.
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ClientGone("the client connection is closed")
        if not data:
            return self._protocol.writing_paused  # an empty chunk would end the chunked body
        if self._chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.write(data)
        self.bytes_sent += len(data)
        self._sha.update(data)
        # Nothing buffered means the kernel took it all and the transport cannot be paused: skip the property call.
        return transport.get_write_buffer_size() > 0 and self._protocol.writing_paused

    async def drain(self) -> None:
        writer = self._writer
        if writer is None or not self._protocol.writing_paused:
            return
        self.stalled_since = now = self._loop.time()
        if self.on_stall is not None:
            self.on_stall(now)
        try:
            await writer.drain()
        except (ConnectionError, ClientConnectionResetError) as exc:
            raise ClientGone(str(exc)) from None
        finally:
            self.stalled_since = 0.0

    def digest(self) -> str:
        return self._sha.hexdigest()

    def heartbeat(self) -> None:
        if self._writer is None and self.committed and self._prepare is None:
            return  # the first write is preparing the response right now; a ping can wait for the next interval
        if self._writer is not None:
            if not self._protocol.writing_paused:
                with contextlib.suppress(ClientGone):  # a client that is gone is noticed by the stream itself
                    self.send(PING_COMMENT)
            return
        task = self._loop.create_task(self._write_quietly(PING_COMMENT))
        task.add_done_callback(_consume)

    async def _write_quietly(self, data: bytes) -> None:
        writer = self._writer or await (self._prepare or self._commit())
        if writer is None:
            return
        with contextlib.suppress(ConnectionError, ClientConnectionResetError, RuntimeError):
            await writer.write(data, drain=False)
            self.bytes_sent += len(data)
            self._sha.update(data)

    async def _finish(self, final: bytes) -> None:
        if final:
            await self.write(final)
        if self._writer is None and self._prepare is None:
            return
        await self.response.write_eof()

    async def end(self, final: bytes = b"", *, clean: bool = True) -> None:
        if not clean:
            transport = self._request.transport
            if transport is not None:
                transport.abort()  # the client stopped reading: drop what is queued, free the memory now
            return
        transport = self._transport
        try:
            if not final and transport is not None and not transport.get_write_buffer_size():
                # Nothing buffered: the last chunk (5 bytes) cannot reach the high-water mark, so ending cannot
                # wait for the client and needs no timer.
                await self._finish(final)
            else:
                async with asyncio.timeout(self._end_timeout):
                    await self._finish(final)
        except (TimeoutError, ConnectionError, ClientConnectionResetError, RuntimeError):
            transport = self._request.transport
            if transport is not None:
                transport.abort()


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
