"""Pre-first-byte retries: pick a deployment, run an attempt, and on a retryable failure spend retry budget,
back off and try the next deployment. After the first byte reaches the client a stream is committed and is never
retried (that is the caller's business: this driver only returns the first event)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sluicegate.gateway.accounting import RequestRecord
from sluicegate.gateway.attempt import AttemptFailed
from sluicegate.gateway.deadlines import StreamDeadlines, deadline_error
from sluicegate.gateway.routing import ModelPool, Route
from sluicegate.observe.metrics import Metrics
from sluicegate.types import GatewayError, GatewayRequest, Outcome

T = TypeVar("T")


class LocalRetryBudget:
    """Requests deposit `ratio` tokens, a retry withdraws one, and `min_per_second` tokens trickle in so a few
    retries are always possible. The balance is capped so a quiet period cannot bank a retry storm."""

    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def _refill(self, key: str, min_per_second: float, now: float) -> float:
        cap = max(10.0, 10.0 * min_per_second)
        tokens = self._tokens.get(key, 0.0)
        last = self._last.get(key, now)
        tokens = min(cap, tokens + (now - last) * min_per_second)
        self._last[key] = now
        self._tokens[key] = tokens
        return tokens

    def deposit(self, key: str, ratio: float, min_per_second: float, now: float) -> None:
        cap = max(10.0, 10.0 * min_per_second)
        self._tokens[key] = min(cap, self._refill(key, min_per_second, now) + ratio)

    def try_withdraw(self, key: str, min_per_second: float, now: float) -> bool:
        tokens = self._refill(key, min_per_second, now)
        if tokens < 1.0:
            return False
        self._tokens[key] = tokens - 1.0
        return True

    def available(self, key: str) -> float:
        return self._tokens.get(key, 0.0)


class RetryDriver:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.budget = LocalRetryBudget()

    def pick(self, pool: ModelPool, tried: set[int]) -> int:
        """Round-robin over the pool, preferring deployments this request has not tried yet."""
        n = len(pool.deployments)
        start = pool.next_index()
        for offset in range(n):
            index = (start + offset) % n
            if index not in tried:
                return index
        return start % n

    async def first_event(
        self, req: GatewayRequest, route: Route, record: RequestRecord, deadlines: StreamDeadlines,
        attempt: Callable[[GatewayRequest, Route, int, StreamDeadlines], Awaitable[T]],
    ) -> T:
        task = asyncio.current_task()
        assert task is not None

        async def run(index: int) -> T:
            try:
                return await attempt(req, route, index, deadlines)
            except asyncio.CancelledError:
                if deadlines.fired is not Outcome.TIMEOUT_FIRST_CHUNK or task.uncancel() > 0:
                    raise
                deadlines.fired = None  # this attempt's deadline; the request may go on with another attempt
                self.metrics.deadline_hits.labels(route.pool.name, Outcome.TIMEOUT_FIRST_CHUNK.value).inc()
                raise AttemptFailed("timeout_first_chunk", deadline_error(Outcome.TIMEOUT_FIRST_CHUNK,
                                                                          route.pool.config)) from None

        return await self._drive(req, route, record, run)

    async def complete(
        self, req: GatewayRequest, route: Route, record: RequestRecord,
        attempt: Callable[[GatewayRequest, Route, int], Awaitable[T]],
    ) -> T:
        async def run(index: int) -> T:
            return await attempt(req, route, index)

        return await self._drive(req, route, record, run)

    async def _drive(self, req: GatewayRequest, route: Route, record: RequestRecord,
                     run: Callable[[int], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        pool = route.pool
        policy = pool.config.retry
        budget = pool.config.retry_budget
        self.budget.deposit(pool.name, budget.ratio, budget.min_per_second, loop.time())
        tried: set[int] = set()
        index = self.pick(pool, tried)
        while True:
            record.attempts += 1
            deployment = pool.deployments[index]
            record.deployment = deployment.label
            try:
                result = await run(index)
            except AttemptFailed as failure:
                self.metrics.upstream_requests.labels(deployment.label, str(failure.condition)).inc()
                error = failure.error
                if failure.condition not in policy.on:
                    raise error from None
                if record.attempts >= policy.attempts:
                    if policy.attempts > 1:
                        self.metrics.retries.labels(pool.name, "exhausted").inc()
                    raise error from None
                if not self.budget.try_withdraw(pool.name, budget.min_per_second, loop.time()):
                    self.metrics.retries.labels(pool.name, "budget_exhausted").inc()
                    raise error from None
                self.metrics.retries.labels(pool.name, "failed").inc()
                self.metrics.retry_budget_available.labels(pool.name).set(self.budget.available(pool.name))
                tried.add(index)
                next_index = self.pick(pool, tried)
                await asyncio.sleep(self._backoff(record.attempts, error, same=next_index == index, pool=pool))
                index = next_index
                continue
            self.metrics.upstream_requests.labels(deployment.label, "ok").inc()
            if record.attempts > 1:
                self.metrics.retries.labels(pool.name, "succeeded").inc()
            return result

    @staticmethod
    def _backoff(attempts_done: int, error: GatewayError, *, same: bool, pool: ModelPool) -> float:
        """Another deployment may take the next attempt at once; the same one waits (full jitter, and at least
        its Retry-After, capped at backoff_max)."""
        if not same:
            return 0.0
        policy = pool.config.retry
        delay = random.uniform(0.0, min(policy.backoff_max, policy.backoff_initial * 2 ** (attempts_done - 1)))
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, policy.backoff_max))
        return delay
