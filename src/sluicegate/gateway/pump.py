"""The pump: upstream body -> codec -> client, driven by the upstream connection's read callback.

Each upstream read goes from the read callback into the worker's relay queue (`relay_queue.py`), which relays at
most a slice of reads per loop turn: so a decode step's burst of reads from hundreds of streams does not hold up a
new request's steps or /healthz for the whole burst. Per read the relay work is: one timestamp, one codec feed, one
histogram bucket, one synchronous write to the client transport. No coroutine, future or task per event, no
wait_for, no log line, no lock: the request's task sleeps in `run()` and wakes only when the stream ends, fails, or
the client stops draining. The end of the body and a lost connection go through the queue too, after the reads
that came before them.

Where it can block: when the client is not draining (its transport is over the high-water mark) the pump stops
reading the upstream (`pause_reading`), so TCP pushes back on the upstream, and the task waits for the client to
drain (watched by the write-stall deadline). A per-stream rate cap holds one batch and pauses reading until the
batch is due. What bounds its memory: the reads it has queued (at most `chunks_per_yield` reads or
`bytes_per_yield` bytes: then it pauses reading until they are relayed), the codec's partial event
(`server.max_event_bytes`) and the client transport's buffer (`server.client_write_buffer`; reads queued before a
pause may still be written into it). What bounds its turn on the loop: the same queue limit; uvloop reads a busy
socket up to 32 times per loop turn, but a firehose upstream gets at most `chunks_per_yield` reads in before its
reading pauses, and they are relayed in turn with every other stream's.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from sluicegate.gateway.client_stream import ClientStream
from sluicegate.gateway.deadlines import StreamDeadlines
from sluicegate.gateway.rate import StreamRateLimiter
from sluicegate.gateway.relay_queue import relay_queue
from sluicegate.observe.histogram import LocalHistogram
from sluicegate.providers.base import StreamCodec
from sluicegate.upstream.connection import UpstreamConnection
from sluicegate.upstream.errors import UpstreamError


@dataclass(frozen=True, slots=True)
class PumpLimits:
    chunks_per_yield: int = 4
    bytes_per_yield: int = 32 * 1024


class Pump:
    """One stream's relay. `run()` returns when the upstream body ended and everything was written; it raises
    what broke the stream (UpstreamError, WireError, ClientGone). Cancelling the task stops it at once."""

    __slots__ = (
        "_backlogged",
        "_client",
        "_clock",
        "_codec",
        "_conn",
        "_deadlines",
        "_error",
        "_gap_bounds",
        "_gap_counts",
        "_gap_n",
        "_gap_sum",
        "_gaps",
        "_held",
        "_held_handle",
        "_last_event",
        "_loop",
        "_max_bytes",
        "_max_reads",
        "_pending_bytes",
        "_pending_reads",
        "_push",
        "_rate",
        "_send",
        "_stalled",
        "_stopped",
        "_upstream_done",
        "_waiter",
    )

    def __init__(self, conn: UpstreamConnection, codec: StreamCodec, client: ClientStream,
                 deadlines: StreamDeadlines, gaps: LocalHistogram, clock: Callable[[], float],
                 limits: PumpLimits, rate: StreamRateLimiter | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._conn = conn
        self._codec = codec
        self._client = client
        self._send = client.send
        self._deadlines = deadlines
        self._gaps = gaps
        self._gap_bounds = gaps.bounds
        self._gap_counts = gaps.counts  # bucket counts go straight in; the sum and count are added at the end
        self._gap_sum = 0.0
        self._gap_n = 0
        self._clock = clock
        self._rate = rate
        self._max_reads = limits.chunks_per_yield
        self._max_bytes = limits.bytes_per_yield
        self._pending_reads = 0  # reads waiting in the relay queue
        self._pending_bytes = 0
        self._backlogged = False  # reading paused until the queued reads are relayed
        self._push = relay_queue(self._loop).push
        self._last_event = deadlines.last_upstream
        self._upstream_done = False  # the upstream body ended (run() finishes once nothing is held back either)
        self._error: BaseException | None = None
        self._stalled = False  # the client is not draining; the task waits for it
        self._held: bytes | None = None  # a batch the rate cap holds back
        self._held_handle: asyncio.TimerHandle | None = None
        self._stopped = False  # run() has returned or was cancelled: callbacks do nothing
        self._waiter: asyncio.Future[None] | None = None

    async def run(self) -> None:
        try:
            self._conn.set_sink(self)
            while self._error is None and not (self._upstream_done and self._held is None):
                if self._stalled:
                    await self._client.drain()
                    self._stalled = False
                    self._resume()
                    continue
                self._waiter = self._loop.create_future()
                await self._waiter
            if self._error is not None:
                raise self._take_error()
            tail = self._codec.finish()
            if tail:
                await self._client.write(tail)
        finally:
            self._stop()

    def _stop(self) -> None:
        if not self._stopped:
            self._gaps.total += self._gap_sum
            self._gaps.count += self._gap_n
        self._stopped = True
        self._conn.set_sink(None)
        if self._held_handle is not None:
            self._held_handle.cancel()
            self._held_handle = None

    # --- BodySink: called from the upstream read callback --------------------------------------------------------
    def body(self, data: bytes) -> None:
        if self._stopped:
            return
        self._pending_reads += 1
        self._pending_bytes += len(data)
        if (self._pending_reads >= self._max_reads or self._pending_bytes >= self._max_bytes) and not self._backlogged:
            self._backlogged = True  # a firehose: read no more until what it sent is relayed
            self._conn.pause_reading()
        self._push(self._relay, data)

    def end(self) -> None:
        if not self._stopped:
            self._push(self._end, None)  # after the reads still queued

    def lost(self, exc: UpstreamError) -> None:
        if not self._stopped:
            self._push(self._fail, exc)  # the reads that came before the failure are relayed first

    # --- the relay queue's work ---------------------------------------------------------------------------------
    def _relay(self, data: bytes) -> None:
        self._pending_reads -= 1
        self._pending_bytes -= len(data)
        if self._stopped or self._error is not None:
            return  # after a failure nothing more goes out: the task ends the stream with an error event
        try:
            if self._backlogged and not self._pending_reads:
                self._backlogged = False
                self._resume()
            now = self._clock()
            self._deadlines.last_upstream = now
            out = self._codec.feed(data)
            if out:
                gap = now - self._last_event
                self._gap_counts[bisect_left(self._gap_bounds, gap)] += 1
                self._gap_sum += gap
                self._gap_n += 1
                self._last_event = now
                if self._rate is not None:
                    delay = self._rate.delay(out, now)
                    if self._held is not None:
                        self._hold_more(out, delay)
                        return
                    if delay > 0.0:
                        self._hold(out, delay)
                        return
                if self._send(out):
                    self._stall()
        except Exception as exc:  # a malformed stream, a client that is gone: the task decides what it means
            self._fail(exc)

    def _end(self, _: None) -> None:
        if self._stopped:
            return
        self._upstream_done = True
        if self._held is None:  # with a batch held back, its release finishes the stream
            self._wake()

    # --- slow paths ---------------------------------------------------------------------------------------------
    def _stall(self) -> None:
        self._stalled = True
        self._conn.pause_reading()
        self._wake()

    def _hold(self, out: bytes, delay: float) -> None:
        self._held = out
        self._conn.pause_reading()
        self._held_handle = self._loop.call_later(delay, self._release_held)

    def _hold_more(self, out: bytes, delay: float) -> None:
        # Reads queued before reading paused join the held batch, which is then due when all of it is.
        assert self._held is not None
        self._held += out
        if delay > 0.0 and self._held_handle is not None:
            self._held_handle.cancel()
            self._held_handle = self._loop.call_later(delay, self._release_held)

    def _release_held(self) -> None:
        self._held_handle = None
        out, self._held = self._held, None
        if self._stopped or out is None:
            return
        self._deadlines.last_upstream = self._clock()  # our own throttling is not upstream silence
        try:
            if self._send(out):
                self._stall()
        except Exception as exc:
            self._fail(exc)
            return
        if self._upstream_done:
            self._wake()
        else:
            self._resume()

    def _resume(self) -> None:
        if not self._stalled and self._held is None and not self._backlogged:
            self._conn.resume_reading()

    def _take_error(self) -> BaseException:
        # Not kept: its traceback holds run()'s frame, which holds this pump (a reference cycle).
        error, self._error = self._error, None
        assert error is not None
        return error

    def _fail(self, exc: BaseException) -> None:
        if self._stopped:
            return
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
