"""Per-event cost of the pump (codec + deadlines timestamp + histogram + yield budget), against a bare
read -> write loop, with in-memory reads and writes so only the gateway's own per-event work is measured.

Run: .venv/bin/pytest benchmarks/test_bench_pump.py --benchmark-only -q -s
Each round pumps a recorded 56-event OpenAI stream (or a synthetic 1,000-event one), one event per read as a
token-paced upstream delivers it. `us_per_event` = mean round time / events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sluicegate.config.schema import TimeoutsConfig
from sluicegate.gateway.deadlines import StreamDeadlines
from sluicegate.gateway.pump import PumpLimits, pump
from sluicegate.observe.histogram import LocalHistogram
from sluicegate.providers.openai import OpenAIPassthroughCodec
from sluicegate.types import Endpoint

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
    committed = True
    bytes_sent = 0
    stalled_since = 0.0
    headers: dict[str, str] = {}
    on_stall = None

    async def write(self, data: bytes) -> None:
        self.bytes_sent += len(data)

    def digest(self) -> str:
        return ""

    def heartbeat(self) -> None:
        pass

    async def end(self, final: bytes = b"", *, clean: bool = True) -> None:
        pass


def reader(events: list[bytes]) -> Callable[[], Awaitable[bytes]]:
    it = iter(events)

    async def read() -> bytes:
        return next(it, b"")

    return read


async def bare_proxy(events: list[bytes]) -> None:
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
    await pump(reader(events), codec, Sink(), deadlines, PumpLimits(), LocalHistogram(), loop.time)
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


@pytest.mark.parametrize("stream", sorted(STREAMS))
@pytest.mark.parametrize("impl", ["bare_proxy", "sluicegate_pump", "wait_for_per_read"])
def test_pump_per_event(benchmark: Any, impl: str, stream: str) -> None:
    import uvloop

    events = STREAMS[stream]
    fn = {"bare_proxy": bare_proxy, "sluicegate_pump": sluicegate_pump, "wait_for_per_read": wait_for_per_read}[impl]
    loop = uvloop.new_event_loop()
    try:
        benchmark.pedantic(lambda: loop.run_until_complete(fn(events)), rounds=200, warmup_rounds=5)
    finally:
        loop.close()
    benchmark.extra_info["us_per_event"] = benchmark.stats.stats.mean / len(events) * 1e6
    print(f"\n{impl:16s} {stream:22s} {benchmark.extra_info['us_per_event']:.2f} us/event")
