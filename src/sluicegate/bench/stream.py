"""One streamed request: send, read events as they arrive, time them, classify how it ended.

The response is read with the gateway's own HTTP/1.1 client (`sluicegate.upstream`): every read of the body is
handed to `_EventSink` from the connection's read callback, so a stream costs no coroutine resumption, future or
reader object per event. A load generator that spends most of a core on its own reads would compete with what it
measures (all three processes share one machine in `benchmarks/e2e.py`).

Error kinds (the `error` of an outcome; None means the request succeeded):
  http_<status>  the answer was not 200
  connect        the connection could not be made (refused, no such host, TLS handshake, proxy)
  timeout        the whole request took longer than its timeout
  stream_error   an error event arrived mid-stream
  incomplete     the body ended cleanly but without the end-of-stream event
  reset          the connection broke (before the answer or mid-stream)
  bad_event      an event's data was not valid JSON
  client_error   the answer was not valid HTTP/1.1
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from time import perf_counter

from sluicegate.bench.protocol import CONTENT, END, ERROR, EventReader
from sluicegate.bench.sse import SSEParser
from sluicegate.upstream.client import UpstreamClient
from sluicegate.upstream.connection import UpstreamConnection
from sluicegate.upstream.errors import UpstreamClosed, UpstreamConnectError, UpstreamConnectTimeout, UpstreamError

READ_SIZE = 64 * 1024
ERROR_BODY_LIMIT = 64 * 1024  # a non-200 answer is read this far (so the connection can be reused), then dropped


def new_client() -> UpstreamClient:
    """One client per run: keep-alive connections are reused from request to request, as a real client would.
    Proxies come from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY); loopback targets never use them."""
    return UpstreamClient(read_size=READ_SIZE, socket_buffer=0)


@dataclass(slots=True)
class RequestOutcome:
    """Filled in while the request runs, so a request cancelled half-way still shows what it received."""

    error: str | None = None
    responded: bool = False  # an HTTP status line arrived: the target is reachable
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    content_events: int = 0
    usage_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """Everything that is the same for every request of a run."""

    url: str
    body: bytes
    headers: dict[str, str]
    timeout_s: float
    reader: type[EventReader]


async def stream_one(client: UpstreamClient, spec: RequestSpec, out: RequestOutcome) -> None:
    """Run one request to its end and record the result in `out`; never raises except on cancellation."""
    try:
        async with asyncio.timeout(spec.timeout_s):
            await _exchange(client, spec, out)
    except TimeoutError:
        out.error = "timeout"
    except (UpstreamConnectError, UpstreamConnectTimeout):
        out.error = "connect"
    except UpstreamClosed:
        out.error = "reset"
    except UpstreamError:
        out.error = "client_error"


async def _exchange(client: UpstreamClient, spec: RequestSpec, out: RequestOutcome) -> None:
    started = perf_counter()
    conn = await client.post(spec.url, spec.headers, spec.body, connect_timeout=spec.timeout_s)
    reuse = False
    try:
        out.responded = True
        if conn.status != 200:
            out.error = f"http_{conn.status}"
            try:
                await conn.read_all(ERROR_BODY_LIMIT)
                reuse = True  # kept only if that was the whole body (the pool checks)
            except UpstreamError:
                pass  # the status is the outcome; a body cut short only costs the connection
            return
        sink = _EventSink(conn, spec.reader(), out, started)
        conn.set_sink(sink)
        await sink.finished
        out.usage_tokens = sink.reader.usage_tokens
        if sink.failure is not None:
            if not sink.ended:
                raise sink.failure
            # The stream had already ended properly; a broken tail does not undo that.
        elif out.error is None and not sink.ended:
            out.error = "incomplete"
        reuse = out.error is None
    finally:
        conn.set_sink(None)
        client.release(conn, reuse=reuse)


class _EventSink:
    """Times and classifies events from the connection's read callback (a BodySink); `finished` resolves when the
    body ends, the connection breaks, or an error event makes reading pointless."""

    __slots__ = ("_conn", "_feed", "_gaps", "_last", "_out", "_started", "ended", "failure", "finished", "reader")

    def __init__(self, conn: UpstreamConnection, reader: EventReader, out: RequestOutcome, started: float) -> None:
        self._conn = conn
        self._feed = SSEParser().feed
        self._out = out
        self._gaps = out.gaps_s
        self._started = started
        self._last = started
        self.reader = reader
        self.ended = False  # the end-of-stream event arrived; the rest of the body is drained unread
        self.failure: UpstreamError | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def body(self, data: bytes) -> None:
        if self.ended or self.finished.done():
            return
        now = perf_counter()
        out = self._out
        classify = self.reader.classify
        for name, event in self._feed(data):
            signal = classify(name, event)
            if signal == CONTENT:
                if out.ttft_s is None:
                    out.ttft_s = now - self._started
                else:
                    self._gaps.append(now - self._last)
                self._last = now
                out.content_events += 1
            elif signal == END:
                self.ended = True  # keep reading to the end of the body, so the connection can be reused
                return
            elif signal >= ERROR:  # ERROR or BAD_EVENT: stop reading a stream that has failed
                out.error = "stream_error" if signal == ERROR else "bad_event"
                self._conn.pause_reading()
                self.finished.set_result(None)
                return

    def end(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def lost(self, exc: UpstreamError) -> None:
        if not self.finished.done():
            self.failure = exc
            self.finished.set_result(None)
