"""In-process slot groups: a counting semaphore per key with FIFO hand-off, O(1) acquire and release.

A released slot is handed straight to the oldest live waiter (its future resolves with the slot already
taken), so a newcomer can never overtake a waiter. Waiters that time out or are cancelled stay in the queue as
dead entries and are skipped on hand-off; the queue is compacted when dead entries outnumber live ones, so its
length stays proportional to the live waiters.
"""

from __future__ import annotations

import asyncio
from collections import deque

from sluicegate.state.base import StateUnavailable


class _Waiter:
    __slots__ = ("cap", "future", "granted", "holder")

    def __init__(self, holder: str, cap: int, future: asyncio.Future[bool]) -> None:
        self.holder = holder
        self.cap = cap
        self.future = future
        self.granted = False


class _Group:
    __slots__ = ("holders", "live_waiters", "waiters")

    def __init__(self) -> None:
        self.holders: set[str] = set()
        self.waiters: deque[_Waiter] = deque()
        self.live_waiters = 0

    def idle(self) -> bool:
        return not self.holders and self.live_waiters == 0


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


class LocalSlotTable:
    """Slot groups by key. Groups with no holder and no waiter are dropped, so idle keys cost nothing."""

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}

    def __len__(self) -> int:
        """How many keys currently have a holder or a waiter."""
        return len(self._groups)

    def in_use(self, key: str) -> int:
        group = self._groups.get(key)
        return len(group.holders) if group is not None else 0

    def holds(self, key: str, holder: str) -> bool:
        group = self._groups.get(key)
        return group is not None and holder in group.holders

    async def acquire(self, key: str, cap: int, holder: str, wait_s: float) -> bool:
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        if holder in group.holders:
            return True
        if group.live_waiters == 0 and len(group.holders) < cap:
            group.holders.add(holder)
            return True
        if wait_s <= 0:
            self._drop_if_idle(key, group)
            return False
        loop = asyncio.get_running_loop()
        waiter = _Waiter(holder, cap, loop.create_future())
        group.waiters.append(waiter)
        group.live_waiters += 1
        timer = loop.call_later(wait_s, _expire, waiter.future)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.granted:
                # Granted between the hand-off and this task resuming: give the slot straight back.
                self.release(key, holder)
            raise
        finally:
            timer.cancel()
            if not waiter.granted:
                group.live_waiters -= 1
                self._after_waiter_left(key, group)

    def adopt(self, key: str, holder: str) -> None:
        """Count `holder` as holding a slot, whatever the cap (used to carry existing leases over)."""
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        group.holders.add(holder)

    def release(self, key: str, holder: str) -> None:
        group = self._groups.get(key)
        if group is None or holder not in group.holders:
            return
        group.holders.discard(holder)
        self._hand_off(group)
        self._drop_if_idle(key, group)

    def fail_waiters(self, error: StateUnavailable) -> None:
        for group in self._groups.values():
            for waiter in group.waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(error)

    def _hand_off(self, group: _Group) -> None:
        waiters = group.waiters
        while waiters:
            head = waiters[0]
            if head.future.done():
                waiters.popleft()
                continue
            if len(group.holders) >= head.cap:
                return
            waiters.popleft()
            group.holders.add(head.holder)
            head.granted = True
            group.live_waiters -= 1
            head.future.set_result(True)

    def _after_waiter_left(self, key: str, group: _Group) -> None:
        waiters = group.waiters
        if group.live_waiters == 0:
            waiters.clear()
        else:
            while waiters and waiters[0].future.done():
                waiters.popleft()
            if len(waiters) > 2 * group.live_waiters + 16:
                group.waiters = deque(w for w in waiters if not w.future.done())
            # A waiter with a larger cap may be able to go now that the head has left.
            self._hand_off(group)
        self._drop_if_idle(key, group)

    def _drop_if_idle(self, key: str, group: _Group) -> None:
        if group.idle() and self._groups.get(key) is group:
            del self._groups[key]
