"""The in-process state backend (the default): plain dicts and loop time, per process, always available.

Nothing here suspends except a slot acquire that has to wait; every other operation completes synchronously
inside its coroutine. Per-key state that can pile up with many distinct keys (rate windows, cooldowns,
failure counters, sticky assignments) expires like its Redis counterpart, so memory stays bounded.
"""

from __future__ import annotations

import asyncio

from sluicegate.state import budget, ratewindow
from sluicegate.state.base import (
    FAILURE_MEMORY_S,
    PROBATION_MAX_S,
    AvailabilityListener,
    CooldownStatus,
    StateUnavailable,
    check_budget_request,
    check_positive_seconds,
    check_rate_request,
    check_slot_request,
)
from sluicegate.state.expiring import ExpiringMap
from sluicegate.state.memory_slots import LocalSlotTable


class _RateWindow:
    __slots__ = ("current", "index", "previous")

    def __init__(self, index: int) -> None:
        self.index = index
        self.previous = 0.0
        self.current = 0.0


class _Budget:
    __slots__ = ("balance", "updated_at")

    def __init__(self, balance: float, updated_at: float) -> None:
        self.balance = balance
        self.updated_at = updated_at


class _Cooldown:
    __slots__ = ("probe_until", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.probe_until = 0.0


def _now() -> float:
    return asyncio.get_running_loop().time()


class MemoryBackend:
    """Per-process state. Satisfies `sluicegate.state.base.StateBackend`."""

    def __init__(self) -> None:
        self._slots = LocalSlotTable()
        self._rates: ExpiringMap[_RateWindow] = ExpiringMap()
        self._budgets: dict[str, _Budget] = {}
        self._failures: ExpiringMap[int] = ExpiringMap()
        self._cooldowns: ExpiringMap[_Cooldown] = ExpiringMap()
        self._sticky: ExpiringMap[str] = ExpiringMap()

    # lifecycle and health

    @property
    def available(self) -> bool:
        return True

    def add_availability_listener(self, listener: AvailabilityListener) -> None:
        """Never called: in-process state cannot become unavailable."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._slots.fail_waiters(StateUnavailable("state backend closed"))

    async def ping(self) -> bool:
        return True

    def fail_waiters(self, error: StateUnavailable) -> None:
        """Every acquire waiting for a slot raises `error` (the Redis backend sends its fallback's waiters back to
        Redis this way when Redis answers again)."""
        self._slots.fail_waiters(error)

    # slots

    async def acquire_slot(self, key: str, cap: int, holder: str, timeout: float) -> bool:  # noqa: ASYNC109
        check_slot_request(cap, timeout)
        return await self._slots.acquire(key, cap, holder, timeout)

    async def release_slot(self, key: str, holder: str) -> None:
        self._slots.release(key, holder)

    def release_slot_nowait(self, key: str, holder: str) -> None:
        """`release_slot` at once: in-process state has nothing to wait for (no task per release)."""
        self._slots.release(key, holder)

    async def in_use(self, key: str) -> int:
        return self._slots.in_use(key)

    def holds_slot(self, key: str, holder: str) -> bool:
        return self._slots.holds(key, holder)

    def adopt_slot(self, key: str, holder: str) -> None:
        """Count `holder` as holding a slot of `key` regardless of the cap (for leases carried over)."""
        self._slots.adopt(key, holder)

    # rate windows

    async def hit_rate(self, key: str, limit: int, window_s: float) -> tuple[bool, float]:
        check_rate_request(limit, window_s)
        now = _now()
        index = ratewindow.window_index(now, window_s)
        state = self._rates.get(key, now)
        if state is None:
            state = _RateWindow(index)
            self._rates.set(key, state, (index + 2) * window_s, now)
        elif state.index != index:
            state.previous, state.current = ratewindow.rolled(state.index, state.previous, state.current, index)
            if index > state.index:
                state.index = index
                self._rates.set(key, state, (index + 2) * window_s, now)
        allowed, retry_after = ratewindow.decide(
            state.previous, state.current, now - state.index * window_s, window_s, limit
        )
        if allowed:
            state.current += 1
        return allowed, retry_after

    # retry budgets

    def _budget(self, key: str, min_per_second: float, now: float) -> _Budget:
        state = self._budgets.get(key)
        if state is None or now - state.updated_at > budget.IDLE_RESET_S:
            state = self._budgets[key] = _Budget(budget.initial_balance(min_per_second), now)
            return state
        state.balance = budget.refilled(state.balance, now - state.updated_at, min_per_second)
        state.updated_at = max(state.updated_at, now)
        return state

    async def budget_deposit(self, key: str, ratio: float, min_per_second: float) -> None:
        check_budget_request(ratio, min_per_second)
        state = self._budget(key, min_per_second, _now())
        state.balance = budget.deposited(state.balance, ratio, min_per_second)

    async def budget_try_withdraw(self, key: str, ratio: float, min_per_second: float) -> bool:
        check_budget_request(ratio, min_per_second)
        state = self._budget(key, min_per_second, _now())
        if state.balance < 1.0:
            return False
        state.balance -= 1.0
        return True

    async def budget_available(self, key: str, ratio: float, min_per_second: float) -> float:
        check_budget_request(ratio, min_per_second)
        return self._budget(key, min_per_second, _now()).balance

    # cooldowns

    async def record_failure(self, key: str) -> int:
        now = _now()
        count = (self._failures.get(key, now) or 0) + 1
        self._failures.set(key, count, now + FAILURE_MEMORY_S, now)
        return count

    async def record_success(self, key: str) -> None:
        now = _now()
        self._failures.pop(key)
        cooldown = self._cooldowns.get(key, now)
        if cooldown is not None and cooldown.until <= now:
            self._cooldowns.pop(key)

    async def start_cooldown(self, key: str, seconds: float) -> None:
        check_positive_seconds("cooldown", seconds)
        now = _now()
        self._cooldowns.set(key, _Cooldown(now + seconds), now + seconds + PROBATION_MAX_S, now)

    async def cooldown_remaining(self, key: str) -> float:
        return (await self.cooldown_status(key)).remaining

    async def cooldown_status(self, key: str) -> CooldownStatus:
        now = _now()
        cooldown = self._cooldowns.get(key, now)
        if cooldown is None:
            return CooldownStatus(0.0, False)
        remaining = max(0.0, cooldown.until - now)
        return CooldownStatus(remaining, remaining == 0.0)

    async def try_acquire_probe(self, key: str, ttl: float) -> bool:
        check_positive_seconds("probe ttl", ttl)
        now = _now()
        cooldown = self._cooldowns.get(key, now)
        if cooldown is None or cooldown.until > now or cooldown.probe_until > now:
            return False
        cooldown.probe_until = now + ttl
        return True

    # sticky assignments

    async def sticky_get(self, key: str) -> str | None:
        return self._sticky.get(key, _now())

    async def sticky_set(self, key: str, value: str, ttl: float) -> None:
        check_positive_seconds("sticky ttl", ttl)
        now = _now()
        self._sticky.set(key, value, now + ttl, now)
