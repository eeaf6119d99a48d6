"""Pre-first-byte attempts: pick a deployment, take its slot, run the attempt, and on a retryable failure spend
retry budget, back off and try the next deployment; when a model's pool is exhausted, its fallbacks. After the
first byte reaches the client a stream is committed and never retried (this driver only returns the first event).

Budgets are per pool and shared by all requests (cluster-wide with the Redis state backend), so an outage cannot
multiply the load: retries are at most ~`ratio` of requests plus a small floor (`min_per_second`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from sluicegate.gateway.accounting import RequestRecord
from sluicegate.gateway.admission import Admission, Slots, rejected
from sluicegate.gateway.attempt import AttemptFailed
from sluicegate.gateway.deadlines import StreamDeadlines, deadline_error
from sluicegate.gateway.routing import Deployment, ModelPool, Route, Router
from sluicegate.gateway.selection import Selector
from sluicegate.observe.metrics import Metrics
from sluicegate.state.base import StateBackend
from sluicegate.types import GatewayError, GatewayRequest, Outcome

log = logging.getLogger("sluicegate.retry")
T = TypeVar("T")
# What an attempt function gets: the deployment, the model name to put in the upstream request, and a callback
# that releases the deployment slot (the attempt's upstream call runs it when it closes).
Attempt = Callable[[Deployment, str, Callable[[], None]], Awaitable[T]]

_SERVER_SIDE = {"connect_error", "reset", "timeout_connect", "timeout_first_chunk", "error_event"}


def counts_against_deployment(condition: str | int) -> bool:
    """Failures that say the deployment is unhealthy (feed cooldowns and fallbacks), not that the request is bad."""
    return condition in _SERVER_SIDE or (isinstance(condition, int) and (condition >= 500 or condition == 429))


class _Run(Generic[T]):
    """One request's walk through its pools."""

    def __init__(self, driver: RetryDriver, req: GatewayRequest, record: RequestRecord, slots: Slots,
                 queue_timeout: float, attempt: Attempt[T], deadlines: StreamDeadlines | None) -> None:
        self.d = driver
        self.req = req
        self.record = record
        self.slots = slots
        self.attempt = attempt
        self.deadlines = deadlines
        self.loop = asyncio.get_running_loop()
        self.queue_deadline = self.loop.time() + queue_timeout
        self.slot_serial = 0
        self.current_holder = ""
        task = asyncio.current_task()
        assert task is not None
        self.task = task

    async def pools(self, route: Route) -> T:
        # (pool, what a wildcard matched, the name a deployment without `model` sends upstream)
        pools = [(route.pool, route.matched, self.req.model)]
        for name in route.pool.config.fallbacks:
            fallback = self.d.router.pool(name)
            if fallback is not None:
                pools.append((fallback, fallback.name, fallback.name))
        for position, (pool, matched, requested) in enumerate(pools):
            try:
                return await self.pool(pool, matched, requested)
            except _PoolFailed as failed:
                if position + 1 == len(pools) or not failed.fallback_worthy:
                    raise failed.detach() from None
        raise AssertionError("unreachable")

    async def pool(self, pool: ModelPool, matched: str, requested: str) -> T:
        policy = pool.config.retry
        budget = pool.config.retry_budget
        state = self.d.state
        await state.budget_deposit(f"budget:{pool.name}", budget.ratio, budget.min_per_second)
        tried: set[int] = set()
        attempts = 0
        while True:
            try:
                order = await self.d.selector.order(pool, self.req, tried)
            except GatewayError as cooling:  # everything cooling down
                raise _PoolFailed(cooling, fallback_worthy=True) from None
            try:
                index = await self.take_slot(pool, order)
            except GatewayError as full:  # every deployment at its cap after the queue deadline
                raise _PoolFailed(full, fallback_worthy=True) from None
            deployment = pool.deployments[index]
            attempts += 1
            self.record.attempts += 1
            self.record.deployment = deployment.label
            try:
                hedge_after = pool.config.hedge_after
                if hedge_after is not None and self.deadlines is not None and len(order) > 1:
                    result, deployment = await self.hedged(pool, order, index, matched, requested, hedge_after)
                else:
                    result = await self.one(pool, deployment, deployment.upstream_model(matched, requested))
            except AttemptFailed as failure:
                if self.deadlines is not None:
                    self.deadlines.attempt_failed(self.loop.time())
                condition = failure.condition
                self.d.metrics.upstream_requests.labels(deployment.label, str(condition)).inc()
                server_side = counts_against_deployment(condition)
                if server_side:
                    await self.d.selector.record(pool, deployment, ok=False)
                # failure.error, never a local: this frame outlives the raise in the traceback, and a local holding
                # the error that is raised on would make a reference cycle of the whole request.
                if condition not in policy.on:
                    raise _PoolFailed(failure.error, fallback_worthy=server_side) from None
                if attempts >= policy.attempts:
                    if policy.attempts > 1:
                        self.d.metrics.retries.labels(pool.name, "exhausted").inc()
                    raise _PoolFailed(failure.error, fallback_worthy=True) from None
                if not await state.budget_try_withdraw(f"budget:{pool.name}", budget.ratio, budget.min_per_second):
                    self.d.metrics.retries.labels(pool.name, "budget_exhausted").inc()
                    raise _PoolFailed(failure.error, fallback_worthy=True) from None
                self.d.metrics.retries.labels(pool.name, "failed").inc()
                await self.d.publish_budget(pool)
                tried.add(index)
                same = len(tried) >= len(pool.deployments)
                await asyncio.sleep(self.d.backoff(attempts, failure.error, same=same, pool=pool))
                continue
            metrics = self.d.metrics
            metrics.child(metrics.upstream_requests, deployment.label, "ok").inc()
            if attempts > 1:
                self.d.metrics.retries.labels(pool.name, "succeeded").inc()
            # Bookkeeping that may cost a Redis round trip stays off the time-to-first-token path.
            if deployment.maybe_cooling or deployment.recent_failures:
                self.d.in_background(self.d.selector.record(pool, deployment, ok=True))
            if pool.config.routing == "sticky":
                self.d.in_background(self.d.selector.remember_sticky(pool, self.req, deployment))
            return result

    def attempt_holder(self) -> str:
        """Each attempt holds its deployment slot under its own holder id. A slot's release runs as a task; reusing
        the request's id for a retry on the same deployment would let that late release free the retry's slot."""
        self.slot_serial += 1
        self.current_holder = f"{self.req.holder}:{self.slot_serial}"
        return self.current_holder

    async def take_slot(self, pool: ModelPool, order: list[int]) -> int:
        """The first deployment in `order` with a free slot. When every one is full, the request queues for all of
        them at once until the queue deadline and takes whichever slot it is given first."""
        admission = self.d.admission
        holder = self.attempt_holder()
        for index in order:
            deployment = pool.deployments[index]
            cap = deployment.config.max_concurrent
            if not cap:
                return index
            if await admission.acquire_deployment(deployment.label, cap, holder, 0.0, count=False):
                self.slots.add(admission.state, f"deployment:{deployment.label}", holder)
                return index
        remaining = self.queue_deadline - self.loop.time()
        if remaining > 0:
            wanted = [(pool.deployments[i].label, pool.deployments[i].config.max_concurrent) for i in order]
            position = await admission.wait_for_any_deployment(wanted, holder, remaining)
            if position is not None:
                index = order[position]
                self.slots.add(admission.state, f"deployment:{pool.deployments[index].label}", holder)
                return index
        first = pool.deployments[order[0]]
        self.d.metrics.rejections.labels("deployment", first.label, "queue_timeout").inc()
        raise rejected("deployment", first.label, f"Every deployment of {pool.name!r} is at its max_concurrent "
                       "limit; retry shortly.")

    async def hedged(self, pool: ModelPool, order: list[int], index: int, matched: str, requested: str,
                     hedge_after: float) -> tuple[T, Deployment]:
        """Start the attempt; if it has produced no event after `hedge_after`, start a second one on another
        deployment (spending retry budget). The first to produce an event wins; the other is closed."""
        first = pool.deployments[index]
        tasks: dict[asyncio.Task[T], Deployment] = {}
        releases: dict[Deployment, Callable[[], None]] = {}

        def start(deployment: Deployment) -> None:
            slot_key, holder = f"deployment:{deployment.label}", self.current_holder
            releases[deployment] = lambda: self.slots.release(slot_key, holder)
            upstream_model = deployment.upstream_model(matched, requested)
            tasks[asyncio.ensure_future(self.attempt(deployment, upstream_model, releases[deployment]))] = deployment

        start(first)
        try:
            done, _ = await asyncio.wait(tasks, timeout=hedge_after)
            if not done:
                second = await self.hedge_target(pool, order, index)
                if second is not None:
                    start(second)
            failure: BaseException | None = None
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is None:
                        winner = tasks[task]
                        self.record.deployment = winner.label
                        return task.result(), winner
                    if failure is None or tasks[task] is first:
                        failure = error
            assert failure is not None
            raise failure
        except asyncio.CancelledError:
            deadlines = self.deadlines
            if deadlines is None or deadlines.fired is not Outcome.TIMEOUT_FIRST_CHUNK or self.task.uncancel() > 0:
                raise
            deadlines.fired = None
            self.d.metrics.deadline_hits.labels(pool.name, Outcome.TIMEOUT_FIRST_CHUNK.value).inc()
            raise AttemptFailed("timeout_first_chunk", deadline_error(Outcome.TIMEOUT_FIRST_CHUNK,
                                                                      first.timeouts)) from None
        finally:
            for task, deployment in tasks.items():
                if not task.done():
                    task.cancel()
                    self.d.metrics.upstream_requests.labels(deployment.label, "hedge_lost").inc()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
                if task.cancelled() or task.exception() is not None:
                    releases[tasks[task]]()

    async def hedge_target(self, pool: ModelPool, order: list[int], index: int) -> Deployment | None:
        budget = pool.config.retry_budget
        if not await self.d.state.budget_try_withdraw(f"budget:{pool.name}", budget.ratio, budget.min_per_second):
            self.d.metrics.retries.labels(pool.name, "budget_exhausted").inc()
            return None
        for other in order:
            deployment = pool.deployments[other]
            if other == index:
                continue
            cap = deployment.config.max_concurrent
            holder = self.attempt_holder()
            if not cap or await self.d.admission.acquire_deployment(deployment.label, cap, holder, 0.0, count=False):
                if cap:
                    self.slots.add(self.d.admission.state, f"deployment:{deployment.label}", holder)
                self.record.attempts += 1
                self.d.metrics.retries.labels(pool.name, "hedged").inc()
                return deployment
        return None

    async def one(self, pool: ModelPool, deployment: Deployment, upstream_model: str) -> T:
        slot_key, holder = f"deployment:{deployment.label}", self.current_holder

        def release() -> None:
            self.slots.release(slot_key, holder)

        try:
            return await self.attempt(deployment, upstream_model, release)
        except asyncio.CancelledError:
            release()
            deadlines = self.deadlines
            if deadlines is None or deadlines.fired is not Outcome.TIMEOUT_FIRST_CHUNK or self.task.uncancel() > 0:
                raise
            deadlines.fired = None  # this attempt's deadline; the request may go on with another attempt
            self.d.metrics.deadline_hits.labels(pool.name, Outcome.TIMEOUT_FIRST_CHUNK.value).inc()
            error = deadline_error(Outcome.TIMEOUT_FIRST_CHUNK, deployment.timeouts)
            raise AttemptFailed("timeout_first_chunk", error) from None
        except BaseException:
            release()
            raise


class _PoolFailed(Exception):
    def __init__(self, error: GatewayError, *, fallback_worthy: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.fallback_worthy = fallback_worthy

    def detach(self) -> GatewayError:
        """The error to answer with, unlinked from this exception. Raised while this one is handled, the error's
        context is this exception; this one (and the attempt failure that is its own context) holding the error
        would make a reference cycle, which keeps the request's frames and objects alive until a GC pass."""
        error = self.error
        del self.error
        self.__context__ = None
        return error


class RetryDriver:
    def __init__(self, metrics: Metrics, state: StateBackend, admission: Admission, router: Router,
                 selector: Selector) -> None:
        self.metrics = metrics
        self.state = state
        self.admission = admission
        self.router = router
        self.selector = selector
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, req: GatewayRequest, route: Route, record: RequestRecord, slots: Slots, queue_timeout: float,
                  attempt: Attempt[T], deadlines: StreamDeadlines | None = None) -> T:
        return await _Run(self, req, record, slots, queue_timeout, attempt, deadlines).pools(route)

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background state update failed: %r", task.exception())

    async def publish_budget(self, pool: ModelPool) -> None:
        budget = pool.config.retry_budget
        available = await self.state.budget_available(f"budget:{pool.name}", budget.ratio, budget.min_per_second)
        self.metrics.retry_budget_available.labels(pool.name).set(available)

    @staticmethod
    def backoff(attempts_done: int, error: GatewayError, *, same: bool, pool: ModelPool) -> float:
        """Another deployment may take the next attempt at once; going back to one already tried waits (full
        jitter, and at least its Retry-After, capped at backoff_max)."""
        if not same:
            return 0.0
        policy = pool.config.retry
        delay = random.uniform(0.0, min(policy.backoff_max, policy.backoff_initial * 2 ** (attempts_done - 1)))
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, policy.backoff_max))
        return delay
