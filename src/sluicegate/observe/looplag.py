"""Event-loop lag, sampled continuously: how late work runs. It is the worker's load-shedding signal.

Two delays make it up. How late a timer ran: the length of the loop's turns. And how long the relay queue makes
streaming reads wait (`gateway/relay_queue.py`): the queue relays a slice of reads per turn, so when the worker is
short of CPU its turns stay short and the delay piles up in the queue instead. Each sample sends a probe through the
queue (behind every read already waiting) and the time it took is the relay delay; a probe still waiting at the
next sample counts for as long as it has waited. One probe per sample: no cost per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sluicegate.observe.metrics import Metrics

SAMPLE_INTERVAL = 0.1

QueuePush = Callable[[Callable[[Any], None], Any], None]


class LoopLagMonitor:
    def __init__(self, metrics: Metrics, interval: float = SAMPLE_INTERVAL) -> None:
        self._metrics = metrics
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expected = 0.0
        self._push: QueuePush | None = None
        self._probe_sent: float | None = None  # when the probe in the relay queue was sent; None: none waiting
        self._relay_delay = 0.0  # what the last probe waited
        self.lag = 0.0  # seconds, last sample

    def start(self, relay_queue_push: QueuePush | None = None) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._push = relay_queue_push
        self._expected = loop.time() + self._interval
        self._handle = loop.call_at(self._expected, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        relay_delay = self._relay_delay
        if self._probe_sent is not None:
            relay_delay = max(relay_delay, now - self._probe_sent)  # still waiting: at least this late
        elif self._push is not None:
            self._probe_sent = now
            self._push(self._probe_relayed, now)
        self.lag = max(0.0, now - self._expected, relay_delay)
        self._metrics.loop_lag.set(self.lag)
        self._expected = now + self._interval
        self._handle = loop.call_at(self._expected, self._tick, loop)

    def _probe_relayed(self, sent: float) -> None:
        if self._loop is None or self._probe_sent != sent:
            return  # stopped meanwhile
        self._relay_delay = self._loop.time() - sent
        self._probe_sent = None

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None
        self._probe_sent = None  # a probe still queued is ignored when it runs
        self._relay_delay = 0.0
        self.lag = 0.0
