"""The Redis state backend: caps, rate windows, budgets, cooldowns and sticky routes shared by a whole fleet.

Slots are leases: a sorted set per key, score = expiry (server time), member = the holder's id plus a serial of
the acquire call that took it. The serial matters: an answer that grants a waiter can arrive after the waiter's
deadline, and that grant is handed back; if the same holder has asked again meanwhile, handing back the old
grant by the holder's name alone would free the new one, and the cap would be exceeded. Acquire/renew/release
are Lua scripts (one round trip each). A background renewer re-arms every lease this instance holds every
lease_ttl/3, one script call per batch of keys, so an instance that dies (kill -9) loses its slots after at most
lease_ttl. Releases are published on one channel; waiters on every instance wake on it and also re-check on a
short poll (the safety net for lost messages and expired leases).

When Redis fails (connection refused, timeout, any Redis error) the backend degrades once, logs one line,
notifies its availability listeners, and checks Redis every `recheck_interval` until it answers:
- fail_open: every operation uses a local memory backend with caps, rates and the budget floor divided by
  `expected_instances` (rounded up, at least 1); this instance's current leases count against its share;
- fail_closed: `acquire_slot` and `hit_rate` raise StateUnavailable; budgets, cooldowns, sticky routes and
  gauges still use the local fallback (refusing them would gain nothing).
On recovery every lease this instance holds (including those taken locally meanwhile) is written back before
shared state is used again, so a restarted, empty Redis regains the fleet's true counts; a lease an acquire script
may have taken although its answer never came is handed back; and acquires still waiting under the local rules
queue in Redis again with the time they have left.

Budget deposits are the one write on every request; they are batched per key and flushed every
`deposit_flush_interval` (or with the next withdraw/peek of that key), so they cost no round trip on the
request path. Late deposits only make the budget stricter, never looser.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluicegate import background
from sluicegate.state import budget
from sluicegate.state.base import (
    FAILURE_MEMORY_S,
    PROBATION_MAX_S,
    AvailabilityListener,
    CooldownStatus,
    OnUnavailable,
    StateUnavailable,
    check_budget_request,
    check_positive_seconds,
    check_rate_request,
    check_slot_request,
)
from sluicegate.state.memory import MemoryBackend
from sluicegate.state.redis_queue import SlotQueue, SlotWaiter, expire_waiter
from sluicegate.state.redis_scripts import Scripts

log = logging.getLogger("sluicegate.state")

_REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
_SLOW_ANSWER: tuple[type[BaseException], ...] = (RedisTimeoutError, TimeoutError)
"""Anything that means "shared state did not answer properly": the backend degrades on all of them."""

PUMP_BATCH = 32
"""At most this many queued holders are offered to Redis per script call."""

RENEW_BATCH = 512
"""At most this many leases are renewed per script call (a script blocks Redis while it runs)."""


class _UseFallback(Exception):
    """Internal: Redis just failed; the caller continues with the local fallback."""


class _SharedStateBack(StateUnavailable):
    """Internal: raised in acquires waiting in the local fallback when Redis answers again; they queue there."""


class _PendingDeposit:
    __slots__ = ("amount", "min_per_second")

    def __init__(self) -> None:
        self.amount = 0.0
        self.min_per_second = 0.0


class RedisBackend:
    """Cluster-wide state through Redis. Satisfies `sluicegate.state.base.StateBackend`; `start()` first."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "sluicegate:",
        lease_ttl: float = 15.0,
        on_unavailable: OnUnavailable = "fail_open",
        expected_instances: int = 1,
        poll_interval: float = 0.25,
        recheck_interval: float = 1.0,
        op_timeout: float = 1.0,
        deposit_flush_interval: float = 0.1,
    ) -> None:
        check_positive_seconds("lease_ttl", lease_ttl)
        check_positive_seconds("poll_interval", poll_interval)
        check_positive_seconds("recheck_interval", recheck_interval)
        check_positive_seconds("op_timeout", op_timeout)
        check_positive_seconds("deposit_flush_interval", deposit_flush_interval)
        if on_unavailable not in ("fail_open", "fail_closed"):
            raise ValueError(f"on_unavailable must be fail_open or fail_closed, got {on_unavailable!r}")
        if expected_instances < 1:
            raise ValueError(f"expected_instances must be >= 1, got {expected_instances}")
        self._prefix = key_prefix
        self._channel = f"{key_prefix}slot-released"
        self._lease_ttl = lease_ttl
        self._ttl_ms = max(1, round(lease_ttl * 1000))
        self._on_unavailable = on_unavailable
        self._expected_instances = expected_instances
        self._poll_interval = poll_interval
        self._recheck_interval = recheck_interval
        self._op_timeout = op_timeout
        self._deposit_flush_interval = deposit_flush_interval
        # One immediate retry on a broken connection (a pooled socket gone stale after a Redis restart);
        # never a backoff: a slow answer on the request path is worse than falling back.
        self._client = Redis.from_url(
            url,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._scripts = Scripts(self._client)
        self._fallback = MemoryBackend()
        self._leases: dict[str, dict[str, str]] = {}  # key -> holder -> its lease's member in Redis
        self._acquire_serial = 0
        # Leases that may be in Redis although we do not hold them: an acquire script's grant whose answer never
        # came, a release that did not reach Redis. Handed back when Redis answers again, unless held by then.
        self._to_hand_back: list[tuple[str, str]] = []
        self._lease_changes = 0  # counts changes of _leases: recovery writes them back until none came meanwhile
        self._queues: dict[str, SlotQueue] = {}
        self._pending_deposits: dict[str, _PendingDeposit] = {}
        self._listeners: list[AvailabilityListener] = []
        self._available = True
        self._started = False
        self._closed = False
        self._release_messages = 0
        self._subscribed: asyncio.Event | None = None
        self._renewal_done: asyncio.Event | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._recheck_task: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()

    # lifecycle and health

    @property
    def available(self) -> bool:
        return self._available

    def add_availability_listener(self, listener: AvailabilityListener) -> None:
        """`listener(False)` once when shared state is lost, `listener(True)` once when it is back."""
        self._listeners.append(listener)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._subscribed = asyncio.Event()
        try:
            await self._client.ping()
        except _REDIS_FAILURES as exc:
            self._mark_unavailable(exc)
        self._loops = [
            asyncio.create_task(self._renew_loop(), name="sluicegate-state-renew"),
            asyncio.create_task(self._flush_loop(), name="sluicegate-state-deposits"),
        ]
        if self._available:
            self._restart_listener()
            # Wait for the subscription so that releases from now on wake this instance's waiters.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), self._op_timeout)

    async def close(self, *, release_leases: bool = True) -> None:
        """Stop background work and disconnect. release_leases=False leaves this instance's leases to expire
        after lease_ttl, exactly as if the process had been killed."""
        if self._closed:
            return
        self._closed = True
        closed = StateUnavailable("state backend closed")
        for queue in self._queues.values():
            queue.fail(closed)
        tasks = [*self._loops, self._listener_task, self._recheck_task]
        tasks += [queue.pump for queue in self._queues.values()]
        await background.stop(tasks, "state backend")
        if release_leases:
            # Lease releases and deposits in flight: let them finish (each is one bounded Redis call).
            await background.settle(self._background, "state backend")
            if self._available:
                with contextlib.suppress(_UseFallback, *_REDIS_FAILURES):
                    await self._flush_deposits()
                    for key, held in list(self._leases.items()):
                        for member in held.values():
                            await self._release_remote(key, member)
        else:
            await background.stop(self._background, "state backend")
        self._leases.clear()
        await self._fallback.close()
        await self._client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except _REDIS_FAILURES:
            return False

    # slots

    async def acquire_slot(self, key: str, cap: int, holder: str, timeout: float) -> bool:  # noqa: ASYNC109
        check_slot_request(cap, timeout)
        self._check_open()
        held = self._leases.get(key)
        if held is not None and holder in held:
            return True
        self._acquire_serial += 1
        member = f"{holder}#{self._acquire_serial}"
        if not self._available:
            return await self._acquire_degraded(key, cap, holder, member, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queue = self._queues.get(key)
        if queue is not None and queue.live > 0:
            # Others on this instance are queued ahead: join the queue (or give up at once).
            if timeout <= 0:
                return False
            return await self._wait_for_slot(key, cap, holder, member, deadline, queue)
        messages_before = self._release_messages
        try:
            granted = await self._acquire_now(key, cap, holder, member)
        except _UseFallback:
            return await self._acquire_degraded(key, cap, holder, member, max(0.0, deadline - loop.time()))
        if granted or timeout <= 0:
            return granted
        if not self._available:  # another call found Redis gone while ours was in flight: no queue serves now
            return await self._acquire_degraded(key, cap, holder, member, max(0.0, deadline - loop.time()))
        queue = self._queue_for(key)
        if self._release_messages != messages_before:
            # A release may have been announced while our attempt was in flight: look again at once.
            queue.wake.set()
        return await self._wait_for_slot(key, cap, holder, member, deadline, queue)

    async def release_slot(self, key: str, holder: str) -> None:
        held = self._leases.get(key)
        member = held.get(holder) if held is not None else None
        if member is not None:
            await self._release_member(key, holder, member)

    def release_slot_nowait(self, key: str, holder: str) -> None:
        # A task of our own: close() lets releases in flight finish before it hands back the rest.
        self._spawn(self.release_slot(key, holder))

    async def _release_member(self, key: str, holder: str, member: str) -> None:
        """Release the lease `member` if it is still the one `holder` holds (not one it took later)."""
        held = self._leases.get(key)
        if held is None or held.get(holder) != member:
            return
        del held[holder]
        if not held:
            del self._leases[key]
        self._lease_changes += 1
        await self._fallback.release_slot(key, holder)
        if self._available and not self._closed:
            # Shielded: a caller cancelled mid-release must not leave the slot taken until its lease expires.
            await asyncio.shield(self._release_remote(key, member))
        elif not self._closed:
            self._to_hand_back.append((key, member))  # Redis may still have it (renewed before the outage)

    def _keep(self, key: str, holder: str, member: str) -> None:
        """A grant arrived for a live acquire: record it, unless the holder already holds a slot of `key` (two
        acquires of one holder at once): then this second lease goes back."""
        held = self._leases.setdefault(key, {})
        if holder in held:
            self._spawn(self._release_remote(key, member))
        else:
            held[holder] = member
            self._lease_changes += 1

    async def in_use(self, key: str) -> int:
        if self._available:
            with contextlib.suppress(_UseFallback):
                return int(await self._eval(self._scripts.in_use, [self._slot_key(key)], []))
        return await self._fallback.in_use(key)

    async def _acquire_now(self, key: str, cap: int, holder: str, member: str) -> bool:
        call = asyncio.ensure_future(
            self._eval(self._scripts.acquire, [self._slot_key(key)], [cap, self._ttl_ms, member])
        )
        try:
            granted = bool(await asyncio.shield(call))
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._undo_if_granted(done, key, member))
            raise
        except _UseFallback:
            self._to_hand_back.append((key, member))
            raise
        if granted:
            self._keep(key, holder, member)
        return granted

    def _undo_if_granted(self, call: asyncio.Future[Any], key: str, member: str) -> None:
        if call.cancelled():
            return
        if isinstance(call.exception(), _UseFallback):
            self._to_hand_back.append((key, member))  # the script may have run: its answer was lost
        elif call.exception() is None and call.result():
            self._spawn(self._release_remote(key, member))

    async def _wait_for_slot(self, key: str, cap: int, holder: str, member: str, deadline: float,
                             queue: SlotQueue) -> bool:
        loop = asyncio.get_running_loop()
        waiter = SlotWaiter(holder, member, cap, loop.create_future())
        queue.add(waiter)
        if queue.pump is None:
            queue.pump = asyncio.create_task(self._pump(key, queue), name="sluicegate-state-slot-pump")
        timer = loop.call_later(max(0.0, deadline - loop.time()), expire_waiter, waiter.future)
        granted: bool | None = None
        try:
            granted = await waiter.future
        except StateUnavailable:
            if self._closed:
                raise
        except asyncio.CancelledError:
            if waiter.granted:
                self._spawn(self._release_member(key, holder, member))
            raise
        finally:
            timer.cancel()
            if not waiter.granted:
                queue.left_without_slot()
                if queue.live == 0 and queue.pump is None and self._queues.get(key) is queue:
                    del self._queues[key]
        if granted is not None:
            return granted
        # Redis failed while we waited: carry on under the fallback rules with the time that is left.
        return await self._acquire_degraded(key, cap, holder, member, max(0.0, deadline - loop.time()))

    async def _pump(self, key: str, queue: SlotQueue) -> None:
        """Asks Redis for slots for the queue's head whenever woken (a release) or every poll_interval."""
        slot_key = self._slot_key(key)
        try:
            while self._pumping(queue):
                if not queue.wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(queue.wake.wait(), self._poll_interval)
                    if not self._pumping(queue):
                        return
                queue.wake.clear()
                batch = queue.head(PUMP_BATCH)
                if not batch:  # the last waiters just timed out and have not left the queue yet
                    continue
                members = [waiter.member for waiter in batch]
                try:
                    granted = int(
                        await self._eval(self._scripts.acquire, [slot_key], [batch[0].cap, self._ttl_ms, *members])
                    )
                except _UseFallback:
                    self._to_hand_back += [(key, waiter.member) for waiter in batch]
                    return
                for waiter in batch[:granted]:
                    if waiter.future.done():
                        # Timed out or cancelled while the script ran: hand the slot straight back (this lease
                        # only: the holder may have asked again since, under a new member).
                        self._spawn(self._release_remote(key, waiter.member))
                    else:
                        self._keep(key, waiter.holder, waiter.member)
                        queue.granted(waiter)
                if granted == len(batch):
                    queue.wake.set()  # everyone offered got in: there may be room for more at once
        finally:
            queue.pump = None
            if queue.live == 0 and self._queues.get(key) is queue:
                del self._queues[key]

    def _pumping(self, queue: SlotQueue) -> bool:
        return queue.live > 0 and self._available and not self._closed

    async def _release_remote(self, key: str, member: str) -> None:
        renewal = self._renewal_done
        if renewal is not None:
            # A renewal in flight may re-add this lease; let it land before removing the lease.
            await renewal.wait()
        try:
            await self._eval(self._scripts.release, [self._slot_key(key)], [member, self._channel, key])
        except _UseFallback:
            if not self._closed:
                self._to_hand_back.append((key, member))

    async def _acquire_degraded(self, key: str, cap: int, holder: str, member: str, wait_s: float) -> bool:
        self._refuse_if_fail_closed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        try:
            granted = await self._fallback.acquire_slot(key, self._local_share(cap), holder, wait_s)
        except _SharedStateBack:
            # Redis answers again: wait in its queue with the time left, under the cluster-wide cap. A slot freed
            # here meanwhile must not go to a local waiter that Redis does not count.
            return await self.acquire_slot(key, cap, holder, max(0.0, deadline - loop.time()))
        if granted:
            self._keep(key, holder, member)  # written to Redis with the others once it is back
            if self._available and self._leases.get(key, {}).get(holder) == member:
                # Granted locally in the moment Redis came back (after the leases were written back): write it now.
                self._spawn(self._restore_lease(key, member))
        return granted

    async def _restore_lease(self, key: str, member: str) -> None:
        with contextlib.suppress(*_REDIS_FAILURES):  # the renewal loop writes it back otherwise
            await self._scripts.renew(keys=[self._slot_key(key)], args=[self._ttl_ms, 1, member])

    def _queue_for(self, key: str) -> SlotQueue:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = SlotQueue()
        return queue

    # rate windows

    async def hit_rate(self, key: str, limit: int, window_s: float) -> tuple[bool, float]:
        check_rate_request(limit, window_s)
        if self._available:
            with contextlib.suppress(_UseFallback):
                allowed, retry_after = await self._eval(
                    self._scripts.hit_rate, [self._key("rate", key)], [limit, window_s * 1000.0]
                )
                return int(allowed) == 1, float(retry_after)
        self._refuse_if_fail_closed()
        return await self._fallback.hit_rate(key, self._local_share(limit), window_s)

    # retry budgets

    async def budget_deposit(self, key: str, ratio: float, min_per_second: float) -> None:
        check_budget_request(ratio, min_per_second)
        if not self._available:
            await self._fallback.budget_deposit(key, ratio, min_per_second / self._expected_instances)
            return
        pending = self._pending_deposits.get(key)
        if pending is None:
            pending = self._pending_deposits[key] = _PendingDeposit()
        pending.amount += ratio
        pending.min_per_second = min_per_second

    async def budget_try_withdraw(self, key: str, ratio: float, min_per_second: float) -> bool:
        check_budget_request(ratio, min_per_second)
        ok, _ = await self._budget_op(key, "w", min_per_second)
        return ok

    async def budget_available(self, key: str, ratio: float, min_per_second: float) -> float:
        check_budget_request(ratio, min_per_second)
        _, balance = await self._budget_op(key, "p", min_per_second)
        return balance

    async def _budget_op(self, key: str, op: str, min_per_second: float) -> tuple[bool, float]:
        """Withdraw ('w'), peek ('p') or just deposit ('d'), first applying this instance's pending deposits."""
        pending = self._pending_deposits.pop(key, None)
        deposit = pending.amount if pending is not None else 0.0
        if self._available:
            with contextlib.suppress(_UseFallback):
                ok, balance = await self._eval(
                    self._scripts.budget,
                    [self._key("budget", key)],
                    [
                        op,
                        deposit,
                        min_per_second,
                        budget.capacity(min_per_second),
                        budget.initial_balance(min_per_second),
                        round(budget.IDLE_RESET_S * 1000),
                    ],
                )
                return int(ok) == 1, float(balance)
        local_floor = min_per_second / self._expected_instances
        if deposit > 0:
            await self._fallback.budget_deposit(key, deposit, local_floor)
        if op == "w":
            return await self._fallback.budget_try_withdraw(key, 0.0, local_floor), 0.0
        return True, await self._fallback.budget_available(key, 0.0, local_floor)

    async def _flush_deposits(self) -> None:
        for key in list(self._pending_deposits):
            pending = self._pending_deposits.get(key)
            if pending is not None:
                await self._budget_op(key, "d", pending.min_per_second)

    # cooldowns

    async def record_failure(self, key: str) -> int:
        if self._available:
            with contextlib.suppress(_UseFallback):
                return int(
                    await self._eval(
                        self._scripts.record_failure, [self._key("fail", key)], [round(FAILURE_MEMORY_S * 1000)]
                    )
                )
        return await self._fallback.record_failure(key)

    async def record_success(self, key: str) -> None:
        if self._available:
            with contextlib.suppress(_UseFallback):
                await self._eval(self._scripts.record_success, [self._key("fail", key), self._key("cool", key)], [])
                return
        await self._fallback.record_success(key)

    async def start_cooldown(self, key: str, seconds: float) -> None:
        check_positive_seconds("cooldown", seconds)
        if self._available:
            with contextlib.suppress(_UseFallback):
                await self._eval(
                    self._scripts.start_cooldown,
                    [self._key("cool", key)],
                    [seconds * 1000.0, round(PROBATION_MAX_S * 1000)],
                )
                return
        await self._fallback.start_cooldown(key, seconds)

    async def cooldown_remaining(self, key: str) -> float:
        return (await self.cooldown_status(key)).remaining

    async def cooldown_status(self, key: str) -> CooldownStatus:
        if self._available:
            with contextlib.suppress(_UseFallback):
                remaining, probation = await self._eval(self._scripts.cooldown_status, [self._key("cool", key)], [])
                return CooldownStatus(float(remaining), int(probation) == 1)
        return await self._fallback.cooldown_status(key)

    async def try_acquire_probe(self, key: str, ttl: float) -> bool:
        check_positive_seconds("probe ttl", ttl)
        if self._available:
            with contextlib.suppress(_UseFallback):
                return int(await self._eval(self._scripts.try_probe, [self._key("cool", key)], [ttl * 1000.0])) == 1
        return await self._fallback.try_acquire_probe(key, ttl)

    # sticky assignments

    async def sticky_get(self, key: str) -> str | None:
        if self._available:
            try:
                value = await self._client.get(self._key("sticky", key))
            except _REDIS_FAILURES as exc:
                self._mark_unavailable(exc)
            else:
                return value.decode() if isinstance(value, bytes) else None
        return await self._fallback.sticky_get(key)

    async def sticky_set(self, key: str, value: str, ttl: float) -> None:
        check_positive_seconds("sticky ttl", ttl)
        if self._available:
            try:
                await self._client.set(self._key("sticky", key), value, px=max(1, round(ttl * 1000)))
            except _REDIS_FAILURES as exc:
                self._mark_unavailable(exc)
            else:
                return
        await self._fallback.sticky_set(key, value, ttl)

    # shared-state plumbing

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    def _slot_key(self, key: str) -> str:
        return f"{self._prefix}slot:{key}"

    def _local_share(self, shared_limit: int) -> int:
        return max(1, math.ceil(shared_limit / self._expected_instances))

    def _check_open(self) -> None:
        if self._closed:
            raise StateUnavailable("state backend closed")
        if not self._started:
            raise RuntimeError("RedisBackend.start() must be awaited before use")

    def _refuse_if_fail_closed(self) -> None:
        if self._on_unavailable == "fail_closed":
            raise StateUnavailable("shared state (Redis) is unavailable and state.on_unavailable is fail_closed")

    async def _eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except _SLOW_ANSWER as exc:
            # One slow answer (a busy host, a GC pause) is not an outage: ask once more before degrading, so that
            # fail_open does not switch to per-instance limits on a single hiccup. The scripts are safe to repeat
            # (a holder holds one slot per key; releases and renewals are idempotent).
            first = exc
        except _REDIS_FAILURES as exc:
            self._mark_unavailable(exc)
            raise _UseFallback from exc
        try:
            return await script(keys=keys, args=args)
        except _REDIS_FAILURES as exc:
            self._mark_unavailable(exc)
            raise _UseFallback from first

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _mark_unavailable(self, exc: BaseException) -> None:
        if not self._available or self._closed:
            return
        self._available = False
        mode = (
            f"using per-instance limits (shared limits / {self._expected_instances})"
            if self._on_unavailable == "fail_open"
            else "refusing admission (fail_closed)"
        )
        log.warning("shared state unavailable (%s: %s); %s until Redis answers", type(exc).__name__, exc, mode)
        # This instance's live leases count against its local share while Redis is away.
        for key, held in self._leases.items():
            for holder in held:
                self._fallback.adopt_slot(key, holder)
        lost = StateUnavailable("shared state (Redis) became unavailable")
        for queue in self._queues.values():
            queue.fail(lost)
        self._notify(False)
        self._recheck_task = asyncio.get_running_loop().create_task(
            self._recheck_loop(), name="sluicegate-state-recheck"
        )

    def _mark_available(self, restored_leases: int) -> None:
        self._available = True
        log.warning(
            "shared state available again; cluster-wide limits resume (%d of our leases had to be restored)",
            restored_leases,
        )
        self._fallback.fail_waiters(_SharedStateBack("shared state is available again"))
        self._restart_listener()
        self._notify(True)

    def _notify(self, available: bool) -> None:
        for listener in self._listeners:
            try:
                listener(available)
            except Exception:
                log.exception("state availability listener failed")

    async def _recheck_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._recheck_interval)
            try:
                # Drop pooled sockets from before the outage, then write our leases back before anyone counts. Until
                # _mark_available the fallback still grants and releases: write back again until nothing changed
                # during a pass, then switch without an await in between.
                await self._client.connection_pool.disconnect()
                await self._client.ping()
                restored = 0
                while True:
                    changes = self._lease_changes
                    restored += await self._renew_leases()
                    await self._hand_back()
                    if changes == self._lease_changes:
                        break
            except _REDIS_FAILURES:
                continue
            self._mark_available(restored)
            return

    async def _hand_back(self) -> None:
        pending, self._to_hand_back = self._to_hand_back, []
        try:
            while pending:
                key, member = pending[-1]
                if member not in self._leases.get(key, {}).values():  # held now: looked up at this moment
                    await self._scripts.release(keys=[self._slot_key(key)], args=[member, self._channel, key])
                pending.pop()
        finally:
            self._to_hand_back += pending  # what Redis did not take yet: the next recheck tries again

    def _restart_listener(self) -> None:
        if self._listener_task is not None:
            self._listener_task.cancel()
        self._listener_task = asyncio.get_running_loop().create_task(
            self._listen_for_releases(), name="sluicegate-state-releases"
        )

    async def _listen_for_releases(self) -> None:
        assert self._subscribed is not None
        while not self._closed:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None and message.get("type") == "message":
                        self._on_release_message(message["data"])
            except _REDIS_FAILURES:
                self._subscribed.clear()
            except Exception:
                self._subscribed.clear()
                log.exception("release listener failed; waiters poll until it is back")
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis 8
            # Waiters fall back to polling until the subscription is back.
            await asyncio.sleep(self._recheck_interval)

    def _on_release_message(self, data: bytes | str) -> None:
        self._release_messages += 1
        key = data.decode() if isinstance(data, bytes) else data
        queue = self._queues.get(key)
        if queue is not None:
            queue.wake.set()

    async def _renew_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._lease_ttl / 3)
            if self._available and self._leases:
                try:
                    restored = await self._renew_leases()
                except _REDIS_FAILURES as exc:
                    self._mark_unavailable(exc)
                else:
                    if restored:
                        log.warning("shared state had lost %d of our slot leases (Redis restart?); restored", restored)

    async def _renew_leases(self) -> int:
        """Re-arms every lease this instance holds, one script call per batch of keys; returns how many had
        been lost and were restored."""
        batches: list[tuple[list[str], list[Any]]] = []
        keys: list[str] = []
        args: list[Any] = [self._ttl_ms]
        count = 0
        for key, held in self._leases.items():
            keys.append(self._slot_key(key))
            args.append(len(held))
            args.extend(held.values())
            count += len(held)
            if count >= RENEW_BATCH:
                batches.append((keys, args))
                keys, args, count = [], [self._ttl_ms], 0
        if keys:
            batches.append((keys, args))
        if not batches:
            return 0
        done = self._renewal_done = asyncio.Event()
        restored = 0
        try:
            for batch_keys, batch_args in batches:
                restored += int(await self._scripts.renew(keys=batch_keys, args=batch_args))
        finally:
            self._renewal_done = None
            done.set()
        return restored

    async def _flush_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._deposit_flush_interval)
            if self._pending_deposits and self._available:
                await self._flush_deposits()
