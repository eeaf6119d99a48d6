"""The pump: upstream bytes -> codec -> client writes, until the upstream ends.

Where it can block: the upstream read (nothing to forward) and the client write (the client is not draining; the
write waits and the upstream is not read meanwhile, so TCP pushes back on the upstream). What bounds its memory:
the upstream reader's buffer (server.upstream_read_buffer, x2 before aiohttp stops reading the socket), one read
in hand, the codec's partial event (server.max_event_bytes) and the client transport's buffer
(server.client_write_buffer). What bounds its turn on the loop: after `chunks_per_yield` reads or
`bytes_per_yield` bytes it yields, so a firehose upstream with a fast client cannot starve other tasks.

Per read the work is: one timestamp, one codec feed, one histogram bucket, one write. No task, no wait_for, no
log line, no lock; deadlines are watched by `StreamDeadlines` from the timestamp alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sluicegate.gateway.client_stream import ClientStream
from sluicegate.gateway.deadlines import StreamDeadlines
from sluicegate.gateway.rate import StreamRateLimiter
from sluicegate.observe.histogram import LocalHistogram
from sluicegate.providers.base import StreamCodec


@dataclass(frozen=True, slots=True)
class PumpLimits:
    chunks_per_yield: int = 16
    bytes_per_yield: int = 256 * 1024


async def pump(
    read: Callable[[], Awaitable[bytes]],
    codec: StreamCodec,
    client: ClientStream,
    deadlines: StreamDeadlines,
    limits: PumpLimits,
    gaps: LocalHistogram,
    clock: Callable[[], float],
    rate: StreamRateLimiter | None = None,
) -> None:
    feed = codec.feed
    write = client.write
    observe = gaps.observe
    chunks_per_yield = limits.chunks_per_yield
    bytes_per_yield = limits.bytes_per_yield
    last_event = deadlines.last_upstream
    chunks = 0
    nbytes = 0
    while True:
        data = await read()
        if not data:
            break
        now = clock()
        deadlines.last_upstream = now
        out = feed(data)
        if out:
            observe(now - last_event)
            last_event = now
            if rate is not None:
                delay = rate.delay(out, now)
                if delay > 0.0:
                    await asyncio.sleep(delay)
                    deadlines.last_upstream = clock()  # our own throttling is not upstream silence
            await write(out)
        chunks += 1
        nbytes += len(data)
        if chunks >= chunks_per_yield or nbytes >= bytes_per_yield:
            chunks = 0
            nbytes = 0
            await asyncio.sleep(0)
    tail = codec.finish()
    if tail:
        await write(tail)
