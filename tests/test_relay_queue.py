"""The worker's relay queue: a decode step's burst of streaming reads is relayed in slices, and other work (a new
request's steps, /healthz) runs between slices instead of after the whole burst; one stream's reads keep their
order; a slice that raises does not stop the queue; the event-loop lag (the load-shedding signal) counts the time
reads wait in the queue, not only how late timers run. (Streams through the queue over real sockets are covered by
every stream test, a failure with reads still queued by test_core_stream_behaviour.py; these pin down the
scheduling itself.)"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest
import uvloop
from prometheus_client import CollectorRegistry

from sluicegate.gateway.relay_queue import RELAY_SLICE, RelayQueue, relay_queue
from sluicegate.observe.looplag import LoopLagMonitor
from sluicegate.observe.metrics import Metrics


@pytest.fixture
def loop() -> asyncio.AbstractEventLoop:
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def test_other_work_runs_between_slices_of_a_burst(loop: asyncio.AbstractEventLoop) -> None:
    queue = RelayQueue(loop)
    relayed: list[int] = []
    seen_by_other_work: list[int] = []

    async def scenario() -> None:
        for i in range(10 * RELAY_SLICE):
            queue.push(relayed.append, i)  # one decode step: every stream's read arrives in the same turn
        loop.call_soon(lambda: seen_by_other_work.append(len(relayed)))  # a new request's step, queued after them
        for _ in range(30):  # ten slices need ten loop turns
            await asyncio.sleep(0)

    loop.run_until_complete(scenario())
    assert relayed == list(range(10 * RELAY_SLICE))
    assert len(queue) == 0
    # It ran after the first slice, not after all ten.
    assert seen_by_other_work == [RELAY_SLICE]


def test_reads_pushed_while_relaying_keep_their_order(loop: asyncio.AbstractEventLoop) -> None:
    queue = RelayQueue(loop, slice_size=3)
    out: list[str] = []

    def relay(item: str) -> None:
        out.append(item)
        if item == "a1":
            queue.push(out.append, "a2")  # arrives while the queue is being worked through: goes to the back

    async def scenario() -> None:
        queue.push(relay, "a1")
        for i in range(5):
            queue.push(out.append, f"b{i}")
        for _ in range(30):  # three slices need three loop turns
            await asyncio.sleep(0)

    loop.run_until_complete(scenario())
    assert out == ["a1", "b0", "b1", "b2", "b3", "b4", "a2"]
    assert len(queue) == 0


def test_a_relay_that_raises_does_not_stop_the_queue(loop: asyncio.AbstractEventLoop) -> None:
    queue = RelayQueue(loop, slice_size=4)
    out: list[int] = []
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))

    def broken(_: int) -> None:
        raise RuntimeError("a bug in one stream's relay")

    async def scenario() -> None:
        queue.push(out.append, 1)
        queue.push(broken, 2)
        for i in range(3, 10):
            queue.push(out.append, i)
        for _ in range(20):
            await asyncio.sleep(0)

    loop.run_until_complete(scenario())
    assert out == [1, *range(3, 10)]
    assert len(queue) == 0
    assert [type(e) for e in errors] == [RuntimeError]


def test_one_queue_per_loop_freed_with_its_loop(loop: asyncio.AbstractEventLoop) -> None:
    other = uvloop.new_event_loop()
    try:
        assert relay_queue(loop) is relay_queue(loop)
        assert relay_queue(other) is not relay_queue(loop)
    finally:
        other.close()
    gone = weakref.ref(other)
    del other
    gc.collect()
    assert gone() is None  # the registry does not keep a closed loop (and what its queue holds) alive


def test_event_loop_lag_counts_the_wait_in_the_relay_queue(loop: asyncio.AbstractEventLoop) -> None:
    # A worker short of CPU: every read costs 2 ms to relay and 400 wait. Sliced, no loop turn lasts much more than
    # RELAY_SLICE x 2 ms (~32 ms), but the last read waits ~0.8 s: that is the lag load shedding must see.
    queue = relay_queue(loop)
    monitor = LoopLagMonitor(Metrics(CollectorRegistry()), interval=0.05)
    turn_lengths: list[float] = []

    def slow_relay(_: int) -> None:
        time.sleep(0.002)

    async def scenario() -> float:
        monitor.start(queue.push)
        await asyncio.sleep(0.12)  # a probe or two through the empty queue
        idle_lag = monitor.lag
        for i in range(400):
            queue.push(slow_relay, i)
        worst = 0.0
        last = time.monotonic()
        while len(queue):
            await asyncio.sleep(0)
            now = time.monotonic()
            turn_lengths.append(now - last)
            last = now
            worst = max(worst, monitor.lag)
        monitor.stop()
        assert idle_lag < 0.05, idle_lag
        return worst

    worst_lag = loop.run_until_complete(scenario())
    assert max(turn_lengths) < 0.3, max(turn_lengths)  # the loop kept turning...
    assert worst_lag > 0.4, worst_lag  # ...and the lag still showed the reads' wait
