"""The worker's relay queue: streaming reads wait here for their relay work (codec, write to the client), and each
loop turn runs at most `RELAY_SLICE` of them.

Why: a model server emits one token for every sequence of its batch at each decode step, so hundreds of streams'
reads arrive in the same `epoll_wait`. Relayed inside the read callbacks, they run as one block of several ms, and
a new request's every step (parse, send upstream, first event, first write) waits behind each such block. Queued,
the block is cut into slices with a poll between them, and everything that is not a streaming read (new requests,
first events, /healthz) runs between slices: it waits for one slice, not for the whole decode step. The order of
one stream's reads is kept (one FIFO for the worker). Per read this costs a deque append and pop; no task, future
or handle per read (one loop handle per turn while the queue is not empty).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

RELAY_SLICE = 16  # reads relayed per loop turn; 4 to 64 measured the same (docs/benchmarks.md, "The relay queue")


class RelayQueue:
    __slots__ = ("_items", "_loop", "_scheduled", "_slice")

    def __init__(self, loop: asyncio.AbstractEventLoop, slice_size: int = RELAY_SLICE) -> None:
        # Weak: the registry below maps the loop to this queue, and a strong reference back would keep every loop
        # (and whatever its queue still holds) alive for ever once it is closed (a test suite makes many).
        self._loop = weakref.ref(loop)
        self._items: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._scheduled = False
        self._slice = slice_size

    def __len__(self) -> int:
        return len(self._items)

    def push(self, work: Callable[[Any], None], arg: Any) -> None:
        self._items.append((work, arg))
        if not self._scheduled:
            loop = self._loop()
            if loop is not None:
                self._scheduled = True
                loop.call_soon(self._run)

    def _run(self) -> None:
        items = self._items
        try:
            for _ in range(min(len(items), self._slice)):
                work, arg = items.popleft()
                work(arg)  # must not raise: the pump catches what its relay raises
        finally:
            loop = self._loop() if items else None
            if loop is not None:
                loop.call_soon(self._run)
            else:
                self._scheduled = False


_QUEUES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RelayQueue] = weakref.WeakKeyDictionary()


def relay_queue(loop: asyncio.AbstractEventLoop) -> RelayQueue:
    """The loop's relay queue (one per worker process)."""
    queue = _QUEUES.get(loop)
    if queue is None:
        queue = _QUEUES[loop] = RelayQueue(loop)
    return queue
