"""Per-event cost of the pump: an upstream read arriving in the connection's read callback, parsed by httptools,
split by the codec, timestamped for the deadlines, bucketed in the gap histogram and written to the client, all
in memory so only the gateway's own per-event work is measured (no sockets, no kernel).

Run: .venv/bin/pytest benchmarks/test_bench_pump.py --benchmark-only -q -s
Each round relays a recorded 56-event OpenAI stream (or a synthetic 1,000-event one), one event per read (HTTP/1.1
chunked, as a token-paced upstream delivers it). `us_per_event` = mean round time / events. Compared with:
- bare_callback_relay: the same connection and parser with a sink that only writes (the floor of this design);
- bare_read_write_loop: a coroutine that awaits a read and awaits a write per event (what an aiohttp proxy's loop
  costs in Python alone, before aiohttp's own reader and writer);
- wait_for_per_read: that loop with a wait_for around every read, the obvious way to enforce an idle deadline.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sluicegate.config.schema import TimeoutsConfig
from sluicegate.gateway.deadlines import StreamDeadlines
from sluicegate.gateway.pump import Pump, PumpLimits
from sluicegate.observe.histogram import LocalHistogram
from sluicegate.providers.openai import OpenAIPassthroughCodec
from sluicegate.types import Endpoint
from sluicegate.upstream.connection import UpstreamConnection
from sluicegate.upstream.errors import UpstreamError

FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures"
FIXTURE = FIXTURES / "openai-chat" / "pydantic-ai-gpt4o-parallel-tool-calls-usage.sse"
CHUNK = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":null,'
         b'"choices":[{"index":0,"delta":{"content":"token "},"logprobs":null,"finish_reason":null}],"usage":null}\n\n')


def events_of(body: bytes) -> list[bytes]:
    parts = body.split(b"\n\n")
    return [p + b"\n\n" for p in parts[:-1]]


STREAMS = {
    "recorded-tool-calls": events_of(FIXTURE.read_bytes()),
    "synthetic-1000": [CHUNK] * 999 + [b"data: [DONE]\n\n"],
}


class Sink:
    """An in-memory client: accepts every write at once."""

    committed = True
    bytes_sent = 0
    stalled_since = 0.0
    headers: dict[str, str] = {}
    on_stall = None

    async def write(self, data: bytes) -> None:
        self.bytes_sent += len(data)

    def send(self, data: bytes) -> bool:
        self.bytes_sent += len(data)
        return False

    async def drain(self) -> None:
        pass

    def digest(self) -> str:
        return ""

    def heartbeat(self) -> None:
        pass

    async def end(self, final: bytes = b"", *, clean: bool = True) -> None:
        pass


class NullTransport(asyncio.Transport):
    def write(self, data: Any) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def chunked(events: list[bytes]) -> list[bytes]:
    return [b"%x\r\n%b\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def open_connection() -> UpstreamConnection:
    conn = UpstreamConnection(("http", "127.0.0.1", 9), 4096, asyncio.get_running_loop())
    conn.connection_made(NullTransport())
    conn.send(b"POST / HTTP/1.1\r\n\r\n")
    deliver(conn, HEAD)
    await conn.response_head()
    return conn


def deliver(conn: UpstreamConnection, data: bytes) -> None:
    """What uvloop does for one socket read: fill the protocol's buffer, then call buffer_updated."""
    conn.get_buffer(len(data))[: len(data)] = data
    conn.buffer_updated(len(data))


class WriteOnly:
    def __init__(self, client: Sink) -> None:
        self.send = client.send

    def body(self, data: bytes) -> None:
        self.send(data)

    def end(self) -> None:
        pass

    def lost(self, exc: UpstreamError) -> None:
        pass


async def bare_callback_relay(events: list[bytes]) -> None:
    conn = await open_connection()
    conn.set_sink(WriteOnly(Sink()))
    for data in events:
        deliver(conn, data)


def reader(events: list[bytes]) -> Callable[[], Awaitable[bytes]]:
    it = iter(events)

    async def read() -> bytes:
        return next(it, b"")

    return read


async def bare_read_write_loop(events: list[bytes]) -> None:
    read = reader(events)
    sink = Sink()
    while data := await read():
        await sink.write(data)


async def sluicegate_pump(events: list[bytes]) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    deadlines = StreamDeadlines(loop, task, TimeoutsConfig())  # type: ignore[arg-type]
    deadlines.start(loop.time(), total=1800)
    deadlines.streaming(loop.time())
    codec = OpenAIPassthroughCodec(Endpoint.CHAT, strip_usage=True, max_event_bytes=1 << 22)
    codec.started = True  # measure the committed phase, as the pump sees it
    conn = await open_connection()
    # Token-paced: each read is 10 ms after the last (a clock that says so), so no read counts towards a yield.
    paced_clock = itertools.count(loop.time(), 0.01).__next__
    relay = asyncio.ensure_future(Pump(conn, codec, Sink(), deadlines, LocalHistogram(), paced_clock,
                                       PumpLimits()).run())
    await asyncio.sleep(0)  # run() has handed the connection its sink
    for data in events:
        deliver(conn, data)
    await relay
    deadlines.stop()


async def wait_for_per_read(events: list[bytes]) -> None:
    """What the deadlines would cost done the obvious way: a wait_for around every read (for comparison only)."""
    read = reader(events)
    sink = Sink()
    codec = OpenAIPassthroughCodec(Endpoint.CHAT, strip_usage=True, max_event_bytes=1 << 22)
    codec.started = True
    while data := await asyncio.wait_for(read(), 60.0):
        out = codec.feed(data)
        if out:
            await sink.write(out)


IMPLS = {
    "bare_callback_relay": (bare_callback_relay, True),
    "bare_read_write_loop": (bare_read_write_loop, False),
    "sluicegate_pump": (sluicegate_pump, True),
    "wait_for_per_read": (wait_for_per_read, False),
}


@pytest.mark.parametrize("stream", sorted(STREAMS))
@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_pump_per_event(benchmark: Any, impl: str, stream: str) -> None:
    import uvloop

    fn, framed = IMPLS[impl]
    events = chunked(STREAMS[stream]) if framed else STREAMS[stream]
    loop = uvloop.new_event_loop()
    try:
        benchmark.pedantic(lambda: loop.run_until_complete(fn(events)), rounds=200, warmup_rounds=5)
    finally:
        loop.close()
    benchmark.extra_info["us_per_event"] = benchmark.stats.stats.mean / len(STREAMS[stream]) * 1e6
    print(f"\n{impl:16s} {stream:22s} {benchmark.extra_info['us_per_event']:.2f} us/event")
