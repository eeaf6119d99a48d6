"""State layer: the contract every backend must meet (run here on the memory backend, and by
tests/test_state_redis.py on Redis), plus the memory backend's own properties and the shared arithmetic."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.state import budget, ratewindow
from sluicegate.state.base import CooldownStatus, StateBackend, StateUnavailable
from sluicegate.state.expiring import SWEEP_MIN_WRITES, ExpiringMap
from sluicegate.state.factory import make_backend
from sluicegate.state.memory import MemoryBackend
from sluicegate.state.memory_slots import LocalSlotTable


async def eventually(check: Callable[[], object], *, within: float = 3.0) -> None:
    """Polls an async predicate until true; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


class StateContract:
    """Semantics both backends must have. Subclasses provide a started `backend` and its `clock`
    (the clock the backend's windows are aligned on)."""

    def clock(self) -> float:
        raise NotImplementedError

    async def sleep_to_window_start(self, window: float) -> None:
        now = self.clock()
        await asyncio.sleep(window - (now % window) + 0.02)

    # slots

    async def test_cap_never_exceeded_with_concurrent_acquirers_and_cancellations(self, backend: StateBackend) -> None:
        key, cap = "dep-concurrency", 4
        holding = peak = 0
        samples: list[int] = []

        async def request(i: int) -> bool:
            nonlocal holding, peak
            holder = f"req-{i}"
            if not await backend.acquire_slot(key, cap, holder, timeout=10.0):
                return False
            try:
                holding += 1
                peak = max(peak, holding)
                samples.append(await backend.in_use(key))
                await asyncio.sleep(random.uniform(0, 0.01))
            finally:
                holding -= 1
                await backend.release_slot(key, holder)
            return True

        tasks = [asyncio.create_task(request(i)) for i in range(60)]
        await asyncio.sleep(0.01)
        doomed = tasks[12::6]
        for task in doomed:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)

        assert peak == cap  # contention really happened, and never more than the cap
        assert max(samples) <= cap
        kept = [result for task, result in zip(tasks, results, strict=True) if task not in doomed]
        assert kept == [True] * len(kept)
        assert any(isinstance(result, asyncio.CancelledError) for result in results)
        await eventually(lambda: self._in_use_is(backend, key, 0))
        assert await backend.acquire_slot(key, cap, "after", timeout=0)

    async def _in_use_is(self, backend: StateBackend, key: str, expected: int) -> bool:
        return await backend.in_use(key) == expected

    async def test_waiters_are_served_in_arrival_order(self, backend: StateBackend) -> None:
        key = "dep-fifo"
        assert await backend.acquire_slot(key, 1, "first", timeout=0)
        order: list[int] = []

        async def waiter(i: int) -> None:
            assert await backend.acquire_slot(key, 1, f"w{i}", timeout=10.0)
            order.append(i)
            await backend.release_slot(key, f"w{i}")

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(waiter(i)))
            await asyncio.sleep(0.03)
        await backend.release_slot(key, "first")
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert order == list(range(6))

    async def test_timeout_zero_rejects_at_once_and_timeout_bounds_the_wait(self, backend: StateBackend) -> None:
        key = "dep-timeout"
        assert await backend.acquire_slot(key, 1, "a", timeout=0) is True
        started = time.monotonic()
        assert await backend.acquire_slot(key, 1, "b", timeout=0) is False
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        assert await backend.acquire_slot(key, 1, "c", timeout=0.3) is False
        assert 0.25 <= time.monotonic() - started < 2.0
        assert await backend.in_use(key) == 1

    async def test_release_is_idempotent_and_a_holder_holds_one_slot(self, backend: StateBackend) -> None:
        key = "dep-release"
        assert await backend.acquire_slot(key, 2, "a", timeout=0)
        assert await backend.acquire_slot(key, 2, "a", timeout=0)  # same holder: still one slot
        assert await backend.acquire_slot(key, 2, "b", timeout=0)
        assert await backend.in_use(key) == 2
        await backend.release_slot(key, "a")
        await backend.release_slot(key, "a")
        await backend.release_slot(key, "never-held")
        await backend.release_slot("no-such-key", "a")
        assert await backend.in_use(key) == 1
        assert await backend.acquire_slot(key, 2, "c", timeout=0)
        # A double release that freed a second slot would let "d" in.
        assert await backend.acquire_slot(key, 2, "d", timeout=0) is False

    async def test_release_without_awaiting_frees_the_slot_for_a_waiter(self, backend: StateBackend) -> None:
        key = "dep-nowait"
        assert await backend.acquire_slot(key, 1, "a", timeout=0)
        waiting = asyncio.create_task(backend.acquire_slot(key, 1, "b", timeout=5.0))
        await asyncio.sleep(0.05)
        backend.release_slot_nowait(key, "a")
        backend.release_slot_nowait(key, "a")  # idempotent, like release_slot
        assert await asyncio.wait_for(waiting, 5.0)
        assert await backend.in_use(key) == 1
        await backend.release_slot(key, "b")
        assert await backend.in_use(key) == 0

    async def test_cancelled_waiter_leaves_no_slot_taken(self, backend: StateBackend) -> None:
        key = "dep-cancel"
        assert await backend.acquire_slot(key, 1, "a", timeout=0)
        waiting = asyncio.create_task(backend.acquire_slot(key, 1, "b", timeout=10.0))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await backend.release_slot(key, "a")
        await eventually(lambda: self._in_use_is(backend, key, 0))
        assert await backend.acquire_slot(key, 1, "c", timeout=0)

    async def test_waiter_cancelled_as_the_slot_is_handed_over_gives_it_back(self, backend: StateBackend) -> None:
        key = "dep-cancel-race"
        assert await backend.acquire_slot(key, 1, "a", timeout=0)
        waiting = asyncio.create_task(backend.acquire_slot(key, 1, "b", timeout=10.0))
        await asyncio.sleep(0.1)
        await backend.release_slot(key, "a")
        waiting.cancel()  # no yield in between: the hand-off may already have happened
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await eventually(lambda: self._in_use_is(backend, key, 0))
        assert await backend.acquire_slot(key, 1, "c", timeout=0)

    async def test_acquire_cancelled_mid_attempt_leaves_no_slot_taken(self, backend: StateBackend) -> None:
        key = "dep-cancel-attempt"
        for i in range(5):
            attempt = asyncio.create_task(backend.acquire_slot(key, 1, f"a{i}", timeout=0))
            await asyncio.sleep(0)  # let it start (for Redis: its script call is on the wire)
            attempt.cancel()
            try:
                got = await attempt
            except asyncio.CancelledError:
                got = False
            if got:  # it finished before the cancel arrived: an ordinary holder
                await backend.release_slot(key, f"a{i}")
            # Faster than any lease ttl used in these tests: the slot must be given back, not left to expire.
            await eventually(lambda: self._in_use_is(backend, key, 0), within=1.0)

    async def test_slot_arguments_are_checked(self, backend: StateBackend) -> None:
        with pytest.raises(ValueError, match="cap"):
            await backend.acquire_slot("k", 0, "a", timeout=0)
        with pytest.raises(ValueError, match="timeout"):
            await backend.acquire_slot("k", 1, "a", timeout=-1)

    # rate windows

    async def test_rate_window_allows_limit_then_slides(self, backend: StateBackend) -> None:
        window, limit = 0.5, 3
        await self.sleep_to_window_start(window)
        results = [await backend.hit_rate("key-a", limit, window) for _ in range(limit)]
        assert results == [(True, 0.0)] * limit
        allowed, retry_after = await backend.hit_rate("key-a", limit, window)
        assert allowed is False
        # Next window, once a third of the current window's 3 hits has slid out: ~0.48 + 0.17 s.
        assert 0.4 < retry_after < 2 * window
        assert (await backend.hit_rate("key-b", limit, window))[0] is True  # keys are independent
        # Sliding, not fixed: just after the window boundary the previous window still counts almost fully.
        await self.sleep_to_window_start(window)
        assert (await backend.hit_rate("key-a", limit, window))[0] is False
        allowed, retry_after = await backend.hit_rate("key-a", limit, window)
        assert allowed is False
        await asyncio.sleep(retry_after + 0.03)
        assert (await backend.hit_rate("key-a", limit, window))[0] is True

    async def test_rate_arguments_are_checked(self, backend: StateBackend) -> None:
        with pytest.raises(ValueError):
            await backend.hit_rate("k", 0, 1.0)
        with pytest.raises(ValueError):
            await backend.hit_rate("k", 1, 0)

    # retry budgets

    async def test_budget_starts_with_the_floor_and_deposits_ratio_per_request(self, backend: StateBackend) -> None:
        key = "pool-deposits"
        assert await backend.budget_available(key, 0.5, 0) == 0.0
        assert await backend.budget_try_withdraw(key, 0.5, 0) is False
        for _ in range(4):
            await backend.budget_deposit(key, 0.5, 0)
        assert await backend.budget_available(key, 0.5, 0) == pytest.approx(2.0)
        assert [await backend.budget_try_withdraw(key, 0.5, 0) for _ in range(3)] == [True, True, False]

    async def test_budget_floor_refills_per_second_and_balance_is_capped(self, backend: StateBackend) -> None:
        key = "pool-floor"
        assert await backend.budget_available(key, 0, 2.0) == pytest.approx(2.0, abs=0.2)
        assert await backend.budget_try_withdraw(key, 0, 2.0)
        assert await backend.budget_try_withdraw(key, 0, 2.0)
        assert await backend.budget_try_withdraw(key, 0, 2.0) is False
        await asyncio.sleep(0.6)
        assert await backend.budget_try_withdraw(key, 0, 2.0)
        for _ in range(40):
            await backend.budget_deposit("pool-cap", 1.0, 0)
        assert await backend.budget_available("pool-cap", 1.0, 0) == pytest.approx(budget.capacity(0))
        for _ in range(40):
            await backend.budget_deposit("pool-cap-3", 1.0, 3.0)
        assert await backend.budget_available("pool-cap-3", 1.0, 3.0) == pytest.approx(30.0, abs=0.01)

    async def test_budget_bounds_retries_of_a_steady_stream_of_failing_requests(self, backend: StateBackend) -> None:
        key, ratio, floor = "pool-outage", 0.2, 5.0
        requests, attempts = 300, 3
        withdrawals = 0
        started = self.clock()
        for i in range(requests):
            await backend.budget_deposit(key, ratio, floor)
            for _ in range(attempts - 1):  # every attempt fails; each retry needs a token
                if not await backend.budget_try_withdraw(key, ratio, floor):
                    break
                withdrawals += 1
            if i % 30 == 0:
                await asyncio.sleep(0.01)
        elapsed = self.clock() - started
        # The documented bound (the start balance is one second of floor, below the cap) ...
        assert withdrawals <= requests * ratio + floor * elapsed + budget.initial_balance(floor) + 1e-9
        assert withdrawals <= requests * ratio + floor * elapsed + budget.capacity(floor)
        # ... and the budget is really spent, not just refused.
        assert withdrawals >= requests * ratio - 1

    async def test_budget_arguments_are_checked(self, backend: StateBackend) -> None:
        with pytest.raises(ValueError):
            await backend.budget_deposit("k", -0.1, 1)
        with pytest.raises(ValueError):
            await backend.budget_try_withdraw("k", 0.1, -1)

    # cooldowns

    async def test_consecutive_failures_count_until_a_success(self, backend: StateBackend) -> None:
        key = "dep-failures"
        assert [await backend.record_failure(key) for _ in range(3)] == [1, 2, 3]
        await backend.record_success(key)
        assert await backend.record_failure(key) == 1
        assert await backend.record_failure("dep-other") == 1

    async def test_cooldown_then_exactly_one_probe_per_ttl_until_success(self, backend: StateBackend) -> None:
        key = "dep-cooldown"
        assert await backend.cooldown_status(key) == CooldownStatus(0.0, False)
        assert await backend.try_acquire_probe(key, 0.3) is False  # healthy: no probe needed
        await backend.start_cooldown(key, 0.3)
        status = await backend.cooldown_status(key)
        assert 0.0 < status.remaining <= 0.3
        assert status.on_probation is False
        assert 0.0 < await backend.cooldown_remaining(key) <= 0.3
        assert await backend.try_acquire_probe(key, 0.3) is False  # still cooling down
        await asyncio.sleep(0.35)
        assert await backend.cooldown_status(key) == CooldownStatus(0.0, True)
        assert await backend.cooldown_remaining(key) == 0.0
        probes = await asyncio.gather(*(backend.try_acquire_probe(key, 0.3) for _ in range(20)))
        assert probes.count(True) == 1
        await asyncio.sleep(0.35)
        probes = await asyncio.gather(*(backend.try_acquire_probe(key, 0.3) for _ in range(5)))
        assert probes.count(True) == 1
        await backend.record_success(key)
        assert await backend.cooldown_status(key) == CooldownStatus(0.0, False)
        assert await backend.try_acquire_probe(key, 0.3) is False

    async def test_success_during_cooldown_does_not_end_it_and_a_new_cooldown_resets_the_probe(
        self, backend: StateBackend
    ) -> None:
        key = "dep-recool"
        await backend.start_cooldown(key, 0.2)
        await backend.record_success(key)
        assert (await backend.cooldown_status(key)).remaining > 0
        await asyncio.sleep(0.25)
        assert await backend.try_acquire_probe(key, 30.0)
        await backend.start_cooldown(key, 0.2)  # the probe failed: cool down again
        await asyncio.sleep(0.25)
        assert await backend.try_acquire_probe(key, 30.0)  # a fresh probe, despite the first one's long ttl

    # sticky assignments

    async def test_sticky_assignment_expires_after_ttl(self, backend: StateBackend) -> None:
        assert await backend.sticky_get("user-1") is None
        await backend.sticky_set("user-1", "dep-a", 0.3)
        await backend.sticky_set("user-1", "dep-b", 0.3)
        await backend.sticky_set("user-2", "dep-c", 30.0)
        assert await backend.sticky_get("user-1") == "dep-b"
        await asyncio.sleep(0.4)
        assert await backend.sticky_get("user-1") is None
        assert await backend.sticky_get("user-2") == "dep-c"

    # health

    async def test_healthy_backend_reports_available(self, backend: StateBackend) -> None:
        assert backend.available is True
        assert await backend.ping() is True


class TestMemoryContract(StateContract):
    def clock(self) -> float:
        return asyncio.get_running_loop().time()

    @pytest.fixture
    async def backend(self) -> AsyncIterator[StateBackend]:
        state = make_backend("memory")
        await state.start()
        yield state
        await state.close()


# memory backend specifics


async def test_idle_slot_groups_are_dropped_and_dead_waiters_compacted() -> None:
    table = LocalSlotTable()
    for i in range(100):
        assert await table.acquire(f"k{i}", 1, "h", 0)
        table.release(f"k{i}", "h")
    assert len(table) == 0
    assert await table.acquire("busy", 1, "h", 0)
    results = await asyncio.gather(*(table.acquire("busy", 1, f"w{i}", 0.01) for i in range(500)))
    assert results == [False] * 500
    late = asyncio.create_task(table.acquire("busy", 1, "late", 5.0))
    await asyncio.sleep(0)
    table.release("busy", "h")
    assert await late is True
    table.release("busy", "late")
    assert len(table) == 0


async def test_close_fails_waiting_acquirers() -> None:
    state = MemoryBackend()
    assert await state.acquire_slot("k", 1, "a", timeout=0)
    waiting = asyncio.create_task(state.acquire_slot("k", 1, "b", timeout=10))
    await asyncio.sleep(0.01)
    await state.close()
    with pytest.raises(StateUnavailable):
        await waiting


async def test_memory_acquire_release_is_cheap() -> None:
    state = MemoryBackend()
    rounds = 20_000
    started = time.perf_counter()
    for i in range(rounds):
        await state.acquire_slot("k", 10, f"h{i}", timeout=0)
        await state.release_slot("k", f"h{i}")
    per_pair_us = (time.perf_counter() - started) / rounds * 1e6
    print(f"memory acquire+release: {per_pair_us:.2f} us per pair")
    assert per_pair_us < 200  # a generous bound: this is a few dict operations


def test_expiring_map_forgets_expired_entries() -> None:
    entries: ExpiringMap[int] = ExpiringMap()
    for i in range(3 * SWEEP_MIN_WRITES):
        entries.set(f"k{i}", i, expires_at=float(i) + 1.0, now=float(i))
    assert len(entries) <= 2 * SWEEP_MIN_WRITES
    assert entries.get("k0", now=5000.0) is None
    assert entries.get(f"k{3 * SWEEP_MIN_WRITES - 1}", now=3 * SWEEP_MIN_WRITES - 1.0) is not None


def test_make_backend_checks_its_settings() -> None:
    assert isinstance(make_backend("memory"), MemoryBackend)
    with pytest.raises(ValueError, match="redis_url"):
        make_backend("redis", redis_url=None)
    with pytest.raises(ValueError, match="on_unavailable"):
        make_backend("redis", redis_url="redis://127.0.0.1:1/0", on_unavailable="maybe")
    with pytest.raises(ValueError, match="backend"):
        make_backend("etcd", redis_url=None)  # type: ignore[arg-type]


# the shared arithmetic


@settings(max_examples=300, deadline=None)
@given(
    previous=st.integers(0, 50),
    current=st.integers(0, 50),
    fraction=st.floats(0, 0.999),
    limit=st.integers(1, 40),
)
def test_refused_hit_is_allowed_once_retry_after_has_passed(
    previous: int, current: int, fraction: float, limit: int
) -> None:
    window, index = 10.0, 100
    now = (index + fraction) * window
    allowed, retry_after = ratewindow.decide(previous, current, now - index * window, window, limit)
    if allowed:
        assert retry_after == 0.0
        return
    later = now + retry_after + 1e-6
    later_index = ratewindow.window_index(later, window)
    prev2, cur2 = ratewindow.rolled(index, previous, current, later_index)
    assert ratewindow.decide(prev2, cur2, later - later_index * window, window, limit)[0]
    if retry_after > 1e-3:  # and not much earlier
        sooner = now + retry_after - 1e-3
        sooner_index = ratewindow.window_index(sooner, window)
        prev3, cur3 = ratewindow.rolled(index, previous, current, sooner_index)
        assert not ratewindow.decide(prev3, cur3, sooner - sooner_index * window, window, limit)[0]


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.floats(0, 1),
    floor=st.floats(0, 20),
    steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 3)), min_size=1, max_size=200),
)
def test_budget_withdrawals_never_exceed_deposits_floor_and_start(
    ratio: float, floor: float, steps: list[tuple[float, int]]
) -> None:
    balance = budget.initial_balance(floor)
    withdrawals = requests = 0
    elapsed = 0.0
    for gap, retries in steps:
        elapsed += gap
        balance = budget.refilled(balance, gap, floor)
        balance = budget.deposited(balance, ratio, floor)
        requests += 1
        for _ in range(retries):
            if balance >= 1.0:
                balance -= 1.0
                withdrawals += 1
        assert 0.0 <= balance <= budget.capacity(floor)
    assert withdrawals <= requests * ratio + floor * elapsed + budget.initial_balance(floor) + 1e-6
