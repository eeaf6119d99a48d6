"""This instance's queue of acquirers waiting for a slot of one Redis slot group.

One pump task per waiting key asks Redis for slots on behalf of the queue, head first, in one script call per
wake-up (a release message, or the poll as a safety net). So waiters on one instance are served in arrival
order, and a crowd of waiters costs one round trip per wake-up, not one each.
"""

from __future__ import annotations

import asyncio
from collections import deque


class SlotWaiter:
    __slots__ = ("cap", "future", "granted", "holder", "member")

    def __init__(self, holder: str, member: str, cap: int, future: asyncio.Future[bool]) -> None:
        self.holder = holder
        self.member = member  # the lease's name in Redis: the holder's id and the acquire call's serial
        self.cap = cap
        self.future = future
        self.granted = False


class SlotQueue:
    __slots__ = ("live", "pump", "waiters", "wake")

    def __init__(self) -> None:
        self.waiters: deque[SlotWaiter] = deque()
        self.live = 0
        self.wake = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None

    def add(self, waiter: SlotWaiter) -> None:
        self.waiters.append(waiter)
        self.live += 1

    def left_without_slot(self) -> None:
        """A waiter timed out, was cancelled or failed; its dead entry is skipped and compacted away."""
        self.live -= 1
        if self.live == 0:
            self.waiters.clear()
        elif len(self.waiters) > 2 * self.live + 16:
            self.waiters = deque(w for w in self.waiters if not w.future.done())

    def granted(self, waiter: SlotWaiter) -> None:
        waiter.granted = True
        self.live -= 1
        waiter.future.set_result(True)

    def head(self, limit: int) -> list[SlotWaiter]:
        """Up to `limit` live waiters, oldest first (dead entries at the front are dropped)."""
        waiters = self.waiters
        while waiters and waiters[0].future.done():
            waiters.popleft()
        batch: list[SlotWaiter] = []
        for waiter in waiters:
            if not waiter.future.done():
                batch.append(waiter)
                if len(batch) == limit:
                    break
        return batch

    def fail(self, error: BaseException) -> None:
        for waiter in self.waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error)


def expire_waiter(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)
