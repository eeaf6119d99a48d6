"""Playing one response onto a connection, driven by loop timers (no task or coroutine per token).

Flow control: the connection reports `paused` while its transport is above the write high-water mark; a
playback then stops producing until `resume()`. So a client that reads nothing blocks the mock instead of
making it buffer the whole stream.
"""

from __future__ import annotations

import asyncio
from typing import Final, Literal, Protocol

from sluicegate.mock.formats.base import StreamEncoder
from sluicegate.mock.http import LAST_CHUNK, chunk, stream_head
from sluicegate.mock.stats import MockStats, RequestRecord, RequestState

BURST_TOKENS: Final = 64  # most tokens produced per loop turn, so one stream never starves the loop
RESET_FLUSH_POLL: Final = 0.001
RESET_FLUSH_LIMIT: Final = 5.0  # reset anyway if the peer never drains what precedes the reset

Fault = Literal["error", "reset", "stall"]
Ending = Literal["end", "reset", "stall"]


class ResponseSink(Protocol):
    """The connection as a playback sees it."""

    loop: asyncio.AbstractEventLoop
    paused: bool

    def write(self, data: bytes) -> None: ...

    def write_buffer_size(self) -> int: ...

    def reset(self) -> None:
        """Abort the connection with a TCP RST."""
        ...

    def response_done(self, playback: Playback) -> None:
        """The response is fully written; the connection may serve its next request."""
        ...


class Playback:
    """One response. `record` is None for the mock's own control endpoints (not counted in stats)."""

    __slots__ = ("_handle", "_record", "_sink", "_stats", "keep_alive")

    def __init__(self, sink: ResponseSink, record: RequestRecord | None, stats: MockStats, *, keep_alive: bool) -> None:
        self._sink = sink
        self._record = record
        self._stats = stats
        self._handle: asyncio.Handle | None = None
        self.keep_alive = keep_alive

    def start(self) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        """The transport drained below its low-water mark."""

    def peer_closed(self) -> None:
        """The connection went away before this response ended."""
        self._cancel()
        if self._record is not None:
            self._stats.finish(self._record, "peer_closed")

    def abandon(self) -> None:
        """The server is stopping: drop timers without recording an outcome."""
        self._cancel()

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _status_sent(self, status: int) -> None:
        if self._record is not None:
            self._stats.status_sent(status)

    def _done(self, state: RequestState) -> None:
        if self._record is not None:
            self._stats.finish(self._record, state)
        self._sink.response_done(self)

    def _stall(self) -> None:
        if self._record is not None:
            self._record.state = "stalled"

    def _reset_when_flushed(self, deadline: float | None = None) -> None:
        """RST the connection once what was written before it has left our buffer."""
        self._handle = None
        now = self._sink.loop.time()
        deadline = now + RESET_FLUSH_LIMIT if deadline is None else deadline
        if self._sink.write_buffer_size() and now < deadline:
            self._handle = self._sink.loop.call_later(RESET_FLUSH_POLL, self._reset_when_flushed, deadline)
            return
        if self._record is not None:
            self._stats.finish(self._record, "reset")
        self._sink.reset()


class DelayedReply(Playback):
    """After `delay`, write `data` (a complete response, if any) and then end, reset or stall."""

    __slots__ = ("_data", "_delay", "_state", "_status", "_then")

    def __init__(
        self,
        sink: ResponseSink,
        record: RequestRecord | None,
        stats: MockStats,
        *,
        keep_alive: bool,
        delay: float = 0.0,
        data: bytes = b"",
        status: int = 200,
        then: Ending = "end",
        state: RequestState = "completed",
    ) -> None:
        super().__init__(sink, record, stats, keep_alive=keep_alive)
        self._delay = delay
        self._data = data
        self._status = status
        self._then = then
        self._state = state

    def start(self) -> None:
        if self._delay > 0:
            self._handle = self._sink.loop.call_later(self._delay, self._fire)
        else:
            self._fire()

    def _fire(self) -> None:
        self._handle = None
        if self._data:
            self._sink.write(self._data)
            self._status_sent(self._status)
        if self._then == "reset":
            self._reset_when_flushed()
        elif self._then == "stall":
            self._stall()
        else:
            self._done(self._state)


class StreamPlayback(Playback):
    """A 200 chunked event stream: headers, head events, `count` tokens, then the end or a fault.

    With `interval` 0 tokens go out in bursts of BURST_TOKENS per loop turn. Otherwise one timer per due
    time on an absolute schedule (no drift); tokens that fell due together leave in one write. A fault at
    N fires in the slot of token N, i.e. one interval after the last token sent.
    """

    __slots__ = (
        "_blocked",
        "_content_type",
        "_count",
        "_due",
        "_encoder",
        "_fault",
        "_finish_reason",
        "_first_delay",
        "_head_done",
        "_headers_delay",
        "_interval",
        "_pending",
        "_sent",
        "_stop_at",
    )

    def __init__(
        self,
        sink: ResponseSink,
        record: RequestRecord | None,
        stats: MockStats,
        *,
        keep_alive: bool,
        encoder: StreamEncoder,
        content_type: str,
        count: int,
        interval: float,
        headers_delay: float,
        first_delay: float,
        finish_reason: str,
        fault: Fault | None,
        fault_at: int,
    ) -> None:
        super().__init__(sink, record, stats, keep_alive=keep_alive)
        self._encoder = encoder
        self._content_type = content_type
        self._count = count
        self._interval = interval
        self._headers_delay = headers_delay
        self._first_delay = first_delay
        self._finish_reason = finish_reason
        self._fault = fault
        self._stop_at = min(fault_at, count) if fault is not None else count
        self._sent = 0
        self._head_done = False
        self._pending = b""  # response head waiting to share a write with the first events
        self._blocked = False
        self._due = 0.0

    def start(self) -> None:
        if self._headers_delay > 0:
            self._handle = self._sink.loop.call_later(self._headers_delay, self._send_headers)
        else:
            self._send_headers()

    def _send_headers(self) -> None:
        self._handle = None
        head = stream_head(200, self._content_type, self.keep_alive)
        self._status_sent(200)
        if self._first_delay > 0:
            self._sink.write(head)
            self._handle = self._sink.loop.call_later(self._first_delay, self._begin)
        else:
            self._pending = head
            self._begin()

    def _begin(self) -> None:
        self._handle = None
        self._due = self._sink.loop.time()
        if self._interval > 0:
            self._tick()
        else:
            self._burst()

    def resume(self) -> None:
        if not self._blocked:
            return
        self._blocked = False
        if self._interval > 0:
            self._due = self._sink.loop.time()  # no catch-up burst after a stall of the reader
            self._handle = self._sink.loop.call_soon(self._tick)
        else:
            self._handle = self._sink.loop.call_soon(self._burst)

    def _burst(self) -> None:
        self._handle = None
        if self._sink.paused:
            self._blocked = True
            return
        if self._advance(BURST_TOKENS):
            if self._sink.paused:
                self._blocked = True
            else:
                self._handle = self._sink.loop.call_soon(self._burst)

    def _tick(self) -> None:
        self._handle = None
        if self._sink.paused:
            self._blocked = True
            return
        loop, interval, due = self._sink.loop, self._interval, self._due
        now = loop.time()
        # Timers have millisecond resolution: send every token that fell due, at least one per tick.
        due_now = min(int((now - due) / interval) + 1, BURST_TOKENS) if now > due else 1
        if not self._advance(due_now):
            return
        due += due_now * interval
        if now - due > BURST_TOKENS * interval:
            due = now + interval  # far behind (e.g. a blocked loop): pace from now instead of flooding
        self._due = due
        if self._sink.paused:
            self._blocked = True
        else:
            self._handle = loop.call_at(due, self._tick)

    def _advance(self, budget: int) -> bool:
        """Send up to `budget` more tokens (and the end if reached); True while more is to come."""
        sent, stop_at, encoder = self._sent, self._stop_at, self._encoder
        if sent == stop_at:
            return self._conclude()
        stop = min(sent + budget, stop_at)
        if self._head_done:
            data = encoder.tokens(sent, stop)
        else:
            self._head_done = True
            data = encoder.head()  # before the tokens: encoders may number their events
            data += encoder.tokens(sent, stop)
        self._sent = stop
        if self._record is not None:
            self._record.tokens_sent = stop
        if stop == self._count and self._fault is None:
            self._write(chunk(data + encoder.end(stop, self._finish_reason)) + LAST_CHUNK)
            self._done("completed")
            return False
        self._write(chunk(data))
        return True

    def _conclude(self) -> bool:
        """All tokens before the ending are out: end normally (no tokens at all) or play the fault."""
        encoder, fault = self._encoder, self._fault
        if fault is None:
            self._write(chunk(encoder.head() + encoder.end(self._sent, self._finish_reason)) + LAST_CHUNK)
            self._done("completed")
        elif fault == "error":
            self._write(chunk(encoder.error_event()) + LAST_CHUNK)
            self._done("errored")
        elif fault == "reset":
            self._flush_pending()
            self._reset_when_flushed()
        else:
            self._flush_pending()
            self._stall()
        return False

    def _write(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + data
            self._pending = b""
        self._sink.write(data)

    def _flush_pending(self) -> None:
        if self._pending:
            self._sink.write(self._pending)
            self._pending = b""
