"""Redis state backend against a real Redis: the shared contract, plus what only a fleet has: two instances on
one cap, a crashed holder's leases expiring, wake-up on release, Redis going away and coming back, and the cost
of one acquire+release round trip on loopback."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sluicegate.state import redis_backend
from sluicegate.state.base import StateBackend, StateUnavailable
from sluicegate.state.factory import make_backend
from sluicegate.state.redis_backend import RedisBackend
from tests.support import redis_server
from tests.support.redis_server import RedisServer
from tests.support.slow_tcp import SlowAnswers
from tests.test_state_memory import StateContract, eventually


@pytest.fixture(scope="module")
def shared_redis_url() -> Iterator[str]:
    with redis_server.redis_url() as url:
        yield url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private server this test may stop and restart (never the shared one)."""
    with redis_server.private_redis_server() as server:
        yield server


def unique_prefix() -> str:
    return f"sgtest:{uuid.uuid4().hex[:12]}:"


@asynccontextmanager
async def running(url: str, prefix: str, **settings: Any) -> AsyncIterator[RedisBackend]:
    """A started backend; on exit, closes it and fails the test if any background task died with an error."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    backend = RedisBackend(url, key_prefix=prefix, **settings)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()
        gc.collect()  # "exception was never retrieved" is reported when the task is collected
        loop.set_exception_handler(previous_handler)
    assert not errors, errors


@asynccontextmanager
async def behind_slow_answers(url: str, prefix: str, **settings: Any
                              ) -> AsyncIterator[tuple[SlowAnswers, RedisBackend, RedisBackend]]:
    """A backend whose Redis answers pass through a SlowAnswers proxy, and another instance that talks to Redis
    directly (the rest of the fleet), both on `prefix`."""
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    async with (
        SlowAnswers(port) as proxy,
        running(f"redis://127.0.0.1:{proxy.port}/0", prefix, **settings) as slow,
        running(url, prefix) as other,
    ):
        yield proxy, slow, other



async def degrade(proxy: SlowAnswers, state: RedisBackend, delay: float) -> None:
    """Redis's answers come `delay` late, longer than the backend's op_timeout: two in a row and it degrades."""
    proxy.delay = delay
    await state.in_use("any")
    assert not state.available


class TestRedisContract(StateContract):
    def clock(self) -> float:
        return time.time()  # the scripts use Redis server time; the server runs on this machine

    @pytest.fixture
    async def backend(self, shared_redis_url: str) -> AsyncIterator[StateBackend]:
        async with running(shared_redis_url, unique_prefix(), lease_ttl=2.0) as state:
            yield state


async def test_factory_builds_a_working_redis_backend(shared_redis_url: str) -> None:
    state = make_backend(
        "redis",
        redis_url=shared_redis_url,
        lease_ttl=5.0,
        on_unavailable="fail_closed",
        expected_instances=3,
        key_prefix=unique_prefix(),
    )
    await state.start()
    try:
        assert await state.acquire_slot("k", 1, "a", timeout=0)
        assert await state.in_use("k") == 1
        await state.release_slot("k", "a")
        assert await state.in_use("k") == 0
    finally:
        await state.close()


async def test_two_instances_never_exceed_one_shared_cap(shared_redis_url: str) -> None:
    prefix, key, cap = unique_prefix(), "dep-shared", 4
    async with running(shared_redis_url, prefix) as first, running(shared_redis_url, prefix) as second:
        holding = peak = 0

        async def request(state: RedisBackend, i: int) -> bool:
            nonlocal holding, peak
            if not await state.acquire_slot(key, cap, f"req-{i}", timeout=15.0):
                return False
            holding += 1
            peak = max(peak, holding)
            await asyncio.sleep(0.005)
            holding -= 1
            await state.release_slot(key, f"req-{i}")
            return True

        results = await asyncio.gather(*(request((first, second)[i % 2], i) for i in range(80)))
        assert results == [True] * 80
        assert peak == cap
        assert await first.in_use(key) == 0


async def test_leases_of_a_crashed_instance_expire_and_waiters_elsewhere_get_the_slots(
    shared_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "RENEW_BATCH", 2)  # several renewal calls per round
    prefix, key, ttl = unique_prefix(), "dep-crash", 1.0
    others = ["dep-crash-2", "dep-crash-3", "dep-crash-4"]
    async with running(shared_redis_url, prefix, lease_ttl=ttl, poll_interval=0.1) as survivor:
        crashing = RedisBackend(shared_redis_url, key_prefix=prefix, lease_ttl=ttl)
        await crashing.start()
        assert await crashing.acquire_slot(key, 2, "a", timeout=0)
        assert await crashing.acquire_slot(key, 2, "b", timeout=0)
        for other in others:
            assert await crashing.acquire_slot(other, 5, "a", timeout=0)
        # Alive, it keeps its leases well past the ttl (renewed every ttl/3).
        await asyncio.sleep(2.5 * ttl)
        assert await survivor.acquire_slot(key, 2, "x", timeout=0) is False
        assert await survivor.in_use(key) == 2
        assert [await survivor.in_use(other) for other in others] == [1, 1, 1]

        crashed_at = time.monotonic()
        await crashing.close(release_leases=False)  # like kill -9: no release, no renewal
        assert await survivor.acquire_slot(key, 2, "x", timeout=ttl + 3.0)
        waited = time.monotonic() - crashed_at
        assert 0.5 <= waited <= ttl + 1.5  # not before the last renewal runs out, soon after it does
        assert await survivor.acquire_slot(key, 2, "y", timeout=2.0)
        await survivor.release_slot(key, "x")
        await survivor.release_slot(key, "y")
        assert await survivor.in_use(key) == 0
        assert [await survivor.in_use(other) for other in others] == [0, 0, 0]


async def test_waiters_wake_on_release_well_before_the_poll(shared_redis_url: str) -> None:
    prefix, key = unique_prefix(), "dep-wake"
    slow_poll = 5.0
    async with (
        running(shared_redis_url, prefix, poll_interval=slow_poll) as holder_side,
        running(shared_redis_url, prefix, poll_interval=slow_poll) as waiter_side,
    ):
        for waiting_on in (waiter_side, holder_side):  # another instance, then the same one
            assert await holder_side.acquire_slot(key, 1, "holder", timeout=0)
            waiting = asyncio.create_task(waiting_on.acquire_slot(key, 1, "waiter", timeout=10.0))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            released_at = time.monotonic()
            await holder_side.release_slot(key, "holder")
            assert await asyncio.wait_for(waiting, slow_poll)
            assert time.monotonic() - released_at < 0.5
            await waiting_on.release_slot(key, "waiter")


async def test_many_waiters_timing_out_together_leave_the_queue_healthy(shared_redis_url: str) -> None:
    prefix, key = unique_prefix(), "dep-timeouts"
    async with running(shared_redis_url, prefix, poll_interval=0.02) as state:
        assert await state.acquire_slot(key, 1, "holder", timeout=0)
        for _ in range(3):
            results = await asyncio.gather(*(state.acquire_slot(key, 1, f"w{i}", timeout=0.2) for i in range(40)))
            assert results == [False] * 40
        assert await state.in_use(key) == 1
        late = asyncio.create_task(state.acquire_slot(key, 1, "late", timeout=5.0))
        await asyncio.sleep(0.05)
        await state.release_slot(key, "holder")
        assert await asyncio.wait_for(late, 5.0)
        await state.release_slot(key, "late")
        assert await state.in_use(key) == 0


async def test_a_late_grant_for_a_timed_out_wait_never_frees_the_same_holders_next_acquire(
        shared_redis_url: str) -> None:
    """The answer to the queue's acquire can arrive after the waiter's deadline; that grant is handed back. The
    gateway then asks again with the same holder (it waits in short slices). Handing back the old grant must not
    free the new acquire's slot: with cap 1 the slot stays taken and another holder is refused. Redis's answers
    to the waiting instance are held back by a proxy, so the grant lands after the deadline on purpose."""
    prefix, key = unique_prefix(), "dep-late-grant"
    async with behind_slow_answers(shared_redis_url, prefix, poll_interval=30.0) as (proxy, waiting_side, other):
        # Open pooled connections now: a connection opened later would need round trips through the slow proxy.
        await asyncio.gather(*(waiting_side.in_use(key) for _ in range(4)))
        assert await other.acquire_slot(key, 1, "A", timeout=0)
        first_wait = asyncio.create_task(waiting_side.acquire_slot(key, 1, "H", timeout=0.8))
        await asyncio.sleep(0.1)  # H is queued
        proxy.delay = 0.5
        await other.release_slot(key, "A")
        # The release message reaches the waiting side at ~0.6 s; its queue asks Redis, which grants H at once, but
        # the answer only arrives at ~1.1 s: after H's deadline (0.8 s).
        assert await first_wait is False
        assert await waiting_side.acquire_slot(key, 1, "H", timeout=5.0)  # the same holder again
        proxy.delay = 0.0
        await asyncio.sleep(0.8)  # every late answer has arrived and been acted on
        assert await other.in_use(key) == 1
        assert not await other.acquire_slot(key, 1, "B", timeout=0)
        await waiting_side.release_slot(key, "H")
        assert await other.in_use(key) == 0


async def test_redis_timeout_decides_when_a_slow_redis_counts_as_unavailable(shared_redis_url: str) -> None:
    """state.redis_timeout: answers slower than it (twice in a row) switch the backend to its on_unavailable mode
    (fail_closed: 503); answers within it are waited for."""
    port = int(shared_redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    async with SlowAnswers(port) as proxy:
        for redis_timeout, degrades in ((2.0, False), (0.2, True)):
            state = make_backend("redis", redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_timeout=redis_timeout,
                                 on_unavailable="fail_closed", key_prefix=unique_prefix())
            await state.start()
            try:
                proxy.delay = 0.4
                started = time.monotonic()
                if degrades:
                    with pytest.raises(StateUnavailable):
                        await state.acquire_slot("k", 1, "h", timeout=0)
                    assert not state.available
                    assert time.monotonic() - started < 1.5  # two tries of 0.2 s, not the 1 s default
                else:
                    assert await state.acquire_slot("k", 1, "h", timeout=0)
                    assert state.available
            finally:
                proxy.delay = 0.0
                await state.close()


async def test_release_messages_still_arrive_after_silence_longer_than_redis_timeout(shared_redis_url: str) -> None:
    """The release subscription blocks without redis_timeout: after a quiet spell five times longer than it, a
    waiter still wakes on the release message, long before its poll would look again."""
    prefix, key = unique_prefix(), "dep-quiet"
    async with running(shared_redis_url, prefix, poll_interval=5.0, op_timeout=0.2) as state:
        assert await state.acquire_slot(key, 1, "holder", timeout=0)
        await asyncio.sleep(1.0)
        waiting = asyncio.create_task(state.acquire_slot(key, 1, "waiter", timeout=10.0))
        await asyncio.sleep(0.1)
        released_at = time.monotonic()
        await state.release_slot(key, "holder")
        assert await asyncio.wait_for(waiting, 5.0)
        assert time.monotonic() - released_at < 0.5


async def test_fail_open_uses_local_shares_then_shared_state_again(own_redis: RedisServer) -> None:
    prefix, key = unique_prefix(), "dep-open"
    transitions: list[bool] = []
    async with running(
        own_redis.url, prefix, on_unavailable="fail_open", expected_instances=2, recheck_interval=0.2
    ) as state:
        state.add_availability_listener(transitions.append)
        assert await state.acquire_slot(key, 4, "a", timeout=0)

        own_redis.stop()
        # Local share of a cap of 4 over 2 instances is 2, and "a" (held before the outage) counts in it.
        assert await state.acquire_slot(key, 4, "b", timeout=0)
        assert await state.acquire_slot(key, 4, "c", timeout=0) is False
        assert state.available is False
        hits = [(await state.hit_rate("api-key", 4, 60.0))[0] for _ in range(5)]
        assert hits == [True, True, False, False, False]
        assert isinstance(await state.budget_try_withdraw("pool", 0.2, 5), bool)
        assert transitions == [False]  # one transition, however many calls failed

        own_redis.start()  # same port, empty: the leases must be written back
        await eventually(lambda: state.available, within=5.0)
        assert transitions == [False, True]
        async with running(own_redis.url, prefix) as other:
            assert await other.in_use(key) == 2
            assert await other.acquire_slot(key, 4, "d", timeout=0)
            assert await other.acquire_slot(key, 4, "e", timeout=0)
            assert await state.acquire_slot(key, 4, "c", timeout=0) is False  # shared cap again
            await state.release_slot(key, "a")
            await state.release_slot(key, "b")
            await other.release_slot(key, "d")
            await other.release_slot(key, "e")
            assert await other.in_use(key) == 0


async def test_a_wait_begun_while_redis_was_away_moves_to_redis_when_it_is_back(own_redis: RedisServer) -> None:
    """fail_open: an acquire that started waiting in the local fallback goes back to Redis's queue as soon as
    Redis answers again, with the time it has left, so the slot it then gets is counted cluster-wide (a slot freed
    in the fallback would otherwise go to it unseen by other instances until the next renewal)."""
    prefix, key = unique_prefix(), "dep-back"
    async with running(own_redis.url, prefix, on_unavailable="fail_open", recheck_interval=0.2) as state:
        assert await state.acquire_slot(key, 1, "a", timeout=0)
        own_redis.stop()
        waiting = asyncio.create_task(state.acquire_slot(key, 1, "w", timeout=10.0))
        await eventually(lambda: not state.available, within=5.0)
        own_redis.start()
        await eventually(lambda: state.available, within=5.0)
        async with running(own_redis.url, prefix) as other:
            await asyncio.sleep(0.2)  # the waiter is queued in Redis now
            assert not waiting.done()
            await state.release_slot(key, "a")
            assert await asyncio.wait_for(waiting, 5.0)
            assert await other.in_use(key) == 1  # w's slot, visible to every instance at once
            assert not await other.acquire_slot(key, 1, "n", timeout=0)
            await state.release_slot(key, "w")
            assert await other.in_use(key) == 0


async def test_an_acquire_that_sees_redis_fail_meanwhile_does_not_wait_in_a_dead_queue(
        shared_redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fail_open: Redis answers "full" to our acquire, and before we queue, another call has found Redis gone (its
    queues are failed, no pump serves them). The acquire continues under the fallback at once instead of waiting
    out its whole timeout in a queue nobody serves."""
    async with running(shared_redis_url, unique_prefix(), on_unavailable="fail_open") as state:
        async def full_and_then_redis_gone(key: str, cap: int, holder: str, member: str) -> bool:
            state._mark_unavailable(OSError("another call's connection broke"))
            return False

        monkeypatch.setattr(state, "_acquire_now", full_and_then_redis_gone)
        started = time.monotonic()
        assert await state.acquire_slot("dep-race", 1, "w", timeout=5.0)  # the local share is free
        assert time.monotonic() - started < 1.0


async def test_a_lease_granted_while_its_answer_was_lost_is_handed_back_when_redis_answers_again(
        shared_redis_url: str) -> None:
    """Redis runs the acquire script (the lease is taken) but its answers come too late, twice: the instance
    degrades and the acquire fails under the local share. That lease must not hold a cluster-wide slot until
    lease_ttl: once Redis answers again it is handed back."""
    prefix, key = unique_prefix(), "dep-unanswered"
    slow = behind_slow_answers(shared_redis_url, prefix, op_timeout=0.2, recheck_interval=0.2, expected_instances=2,
                               on_unavailable="fail_open")
    async with slow as (proxy, state, other):
        assert await state.acquire_slot(key, 2, "a", timeout=0)
        proxy.delay = 0.5
        # Redis grants "b" (2 of 2), but no answer comes in time: degraded, the local share is 1 and "a" has it.
        assert await state.acquire_slot(key, 2, "b", timeout=0) is False
        assert not state.available
        assert await other.in_use(key) == 2  # the unanswered lease
        proxy.delay = 0.0
        await eventually(lambda: state.available, within=5.0)
        assert await other.in_use(key) == 1  # "a" only
        await state.release_slot(key, "a")
        assert await other.in_use(key) == 0


async def test_a_slot_released_while_redis_was_away_is_handed_back_when_it_answers(shared_redis_url: str) -> None:
    """fail_open: a slot released during the outage could not be released in Redis, where its lease (renewed
    before the outage) would hold a cluster-wide slot for lease_ttl; it is handed back when Redis answers."""
    prefix, key = unique_prefix(), "dep-released-away"
    slow = behind_slow_answers(shared_redis_url, prefix, op_timeout=0.2, recheck_interval=0.2)
    async with slow as (proxy, state, other):
        assert await state.acquire_slot(key, 2, "a", timeout=0)
        await degrade(proxy, state, 0.5)
        await state.release_slot(key, "a")
        assert await other.in_use(key) == 1  # Redis still has a's lease
        proxy.delay = 0.0
        await eventually(lambda: state.available, within=5.0)
        assert await other.in_use(key) == 0


async def test_a_slot_taken_while_the_leases_are_written_back_is_written_back_too(shared_redis_url: str) -> None:
    """fail_open: Redis answers again and the instance writes its leases back; until it switches, the local rules
    still grant. A slot granted during that write-back is written back as well before the switch, not only at the
    next renewal (lease_ttl/3 later), so the cluster-wide count is right from the moment shared state is used."""
    prefix, key = unique_prefix(), "dep-during-writeback"
    slow = behind_slow_answers(shared_redis_url, prefix, op_timeout=0.3, recheck_interval=0.2)
    async with slow as (proxy, state, other):
        assert await state.acquire_slot(key, 3, "a", timeout=0)
        await degrade(proxy, state, 0.7)
        proxy.delay = 0.15  # answers again, slowly: the write-back takes a while
        await eventually(lambda: state._renewal_done is not None, within=5.0)  # the write-back is in flight
        assert await state.acquire_slot(key, 3, "b", timeout=0)  # granted under the local rules
        await eventually(lambda: state.available, within=5.0)
        proxy.delay = 0.0
        assert await other.in_use(key) == 2  # a and b


async def test_fail_closed_refuses_admission_then_recovers(own_redis: RedisServer) -> None:
    prefix, key = unique_prefix(), "dep-closed"
    transitions: list[bool] = []
    async with running(own_redis.url, prefix, on_unavailable="fail_closed", recheck_interval=0.2) as state:
        state.add_availability_listener(transitions.append)
        own_redis.stop()
        with pytest.raises(StateUnavailable):
            await state.acquire_slot(key, 4, "a", timeout=1.0)
        with pytest.raises(StateUnavailable):
            await state.hit_rate("api-key", 10, 60.0)
        with pytest.raises(StateUnavailable):
            await state.acquire_slot(key, 4, "a", timeout=0)
        # Advisory state carries on locally rather than failing the request.
        await state.budget_deposit("pool", 0.2, 5)
        assert isinstance(await state.budget_try_withdraw("pool", 0.2, 5), bool)
        assert await state.record_failure("dep") == 1
        assert transitions == [False]

        own_redis.start()
        await eventually(lambda: state.available, within=5.0)
        assert transitions == [False, True]
        assert await state.acquire_slot(key, 4, "a", timeout=0)
        await state.release_slot(key, "a")


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
async def test_waiter_queued_in_redis_follows_the_mode_when_redis_dies(own_redis: RedisServer, mode: str) -> None:
    prefix, key = unique_prefix(), "dep-midwait"
    async with running(own_redis.url, prefix, on_unavailable=mode, poll_interval=0.1, recheck_interval=0.2) as state:
        assert await state.acquire_slot(key, 1, "a", timeout=0)
        waiting = asyncio.create_task(state.acquire_slot(key, 1, "b", timeout=10.0))
        await asyncio.sleep(0.2)
        own_redis.stop()
        if mode == "fail_closed":
            with pytest.raises(StateUnavailable):
                await asyncio.wait_for(waiting, 3.0)
            return
        await asyncio.sleep(0.3)
        assert not waiting.done()  # now queued locally behind "a", which still counts
        await state.release_slot(key, "a")
        assert await asyncio.wait_for(waiting, 3.0)
        await state.release_slot(key, "b")


async def test_acquire_release_round_trip_cost(shared_redis_url: str) -> None:
    rounds = 2000
    async with running(shared_redis_url, unique_prefix()) as state:
        for i in range(50):  # warm the pool and the script cache
            await state.acquire_slot("warm", 8, f"w{i}", timeout=0)
            await state.release_slot("warm", f"w{i}")
        pairs: list[float] = []
        acquires: list[float] = []
        for i in range(rounds):
            started = time.perf_counter()
            assert await state.acquire_slot("dep-bench", 8, f"h{i}", timeout=0)
            acquired = time.perf_counter()
            await state.release_slot("dep-bench", f"h{i}")
            pairs.append(time.perf_counter() - started)
            acquires.append(acquired - started)
    pair_p50, pair_p99 = percentiles_ms(pairs)
    acquire_p50, acquire_p99 = percentiles_ms(acquires)
    print(
        f"redis on loopback over {rounds}: acquire+release p50 {pair_p50:.3f} ms p99 {pair_p99:.3f} ms; "
        f"acquire alone p50 {acquire_p50:.3f} ms p99 {acquire_p99:.3f} ms"
    )
    assert pair_p50 < 5.0  # generous: two loopback round trips on a shared 2-core machine


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[max(0, round(0.99 * len(ordered)) - 1)] * 1e3
