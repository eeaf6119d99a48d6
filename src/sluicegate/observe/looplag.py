"""Event-loop lag, sampled continuously: how late a timer ran. It is the worker's load-shedding signal."""

from __future__ import annotations

import asyncio

from sluicegate.observe.metrics import Metrics

SAMPLE_INTERVAL = 0.1


class LoopLagMonitor:
    def __init__(self, metrics: Metrics, interval: float = SAMPLE_INTERVAL) -> None:
        self._metrics = metrics
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._expected = 0.0
        self.lag = 0.0  # seconds, last sample

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._expected = loop.time() + self._interval
        self._handle = loop.call_at(self._expected, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.lag = max(0.0, now - self._expected)
        self._metrics.loop_lag.set(self.lag)
        self._expected = now + self._interval
        self._handle = loop.call_at(self._expected, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
