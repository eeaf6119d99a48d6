"""Which deployment to try next: the routing strategy orders the pool, cooldowns take failing deployments out (a
single probe brings one back), and deployments this request already tried go last."""

from __future__ import annotations

import random
import time

from sluicegate.gateway.routing import Deployment, ModelPool
from sluicegate.state.base import StateBackend
from sluicegate.types import GatewayError, GatewayRequest, Outcome

STICKY_TTL = 3600.0
HEALTHY_CACHE_TTL = 0.5  # shared state: a deployment seen healthy is not asked about again for this long


def cooldown_key(deployment: Deployment) -> str:
    return f"cooldown:{deployment.label}"


def sticky_key(pool: ModelPool, who: str) -> str:
    return f"sticky:{pool.name}:{who}"


def sticky_identity(req: GatewayRequest) -> str | None:
    return req.key_name or req.user


class Selector:
    def __init__(self, state: StateBackend, *, shared: bool) -> None:
        self.state = state
        # With shared state another instance may have started a cooldown: ask (a healthy answer is reused for
        # HEALTHY_CACHE_TTL, so the request path does not pay a Redis round trip per deployment). Locally, the
        # hint suffices.
        self.shared = shared
        self._healthy_until: dict[str, float] = {}

    async def order(self, pool: ModelPool, req: GatewayRequest, tried: set[int]) -> list[int]:
        """Eligible deployments in the order to try them. Raises 503 when every one is cooling down."""
        eligible: list[int] = []
        soonest = float("inf")
        now = time.monotonic()
        for index, deployment in enumerate(pool.deployments):
            if not deployment.maybe_cooling and (not self.shared
                                                 or self._healthy_until.get(deployment.label, 0.0) > now):
                eligible.append(index)
                continue
            status = await self.state.cooldown_status(cooldown_key(deployment))
            if self.shared and status.remaining <= 0 and not status.on_probation:
                self._healthy_until[deployment.label] = now + HEALTHY_CACHE_TTL
            if status.remaining > 0:
                soonest = min(soonest, status.remaining)
                continue
            if status.on_probation:
                if not await self.state.try_acquire_probe(cooldown_key(deployment), max(pool.config.cooldown, 1.0)):
                    continue  # another request is the probe
                deployment.maybe_cooling = True  # so that this probe's success is recorded and ends the probation
            if not status.on_probation:
                deployment.maybe_cooling = False
            eligible.append(index)
        if not eligible:
            wait = soonest if soonest != float("inf") else pool.config.cooldown
            raise GatewayError(
                503, f"Every deployment of {pool.name!r} is cooling down after failures; retry in {wait:.0f}s.",
                type="server_error", code="deployments_cooling_down", outcome=Outcome.UPSTREAM_ERROR,
                retry_after=wait,
            )
        ordered = await self._by_strategy(pool, req, eligible)
        fresh = [i for i in ordered if i not in tried]
        return fresh + [i for i in ordered if i in tried]

    async def _by_strategy(self, pool: ModelPool, req: GatewayRequest, eligible: list[int]) -> list[int]:
        deployments = pool.deployments
        strategy = pool.config.routing
        start = pool.next_index()
        rotated = sorted(eligible, key=lambda i: (i - start) % len(deployments))
        if strategy == "weighted":
            # Weighted order without replacement: a larger weight is more likely to come first.
            return sorted(eligible, key=lambda i: random.random() ** (1.0 / deployments[i].config.weight),
                          reverse=True)
        if strategy == "least_in_flight":
            return sorted(rotated, key=lambda i: deployments[i].in_flight)
        if strategy == "lowest_ttft":
            # Unmeasured deployments first, so each gets observed.
            return sorted(rotated, key=lambda i: deployments[i].ttft_ewma or 0.0)
        if strategy == "sticky":
            who = sticky_identity(req)
            if who is not None:
                label = await self.state.sticky_get(sticky_key(pool, who))
                for position, index in enumerate(rotated):
                    if deployments[index].label == label:
                        return [index, *rotated[:position], *rotated[position + 1 :]]
        return rotated

    async def remember_sticky(self, pool: ModelPool, req: GatewayRequest, deployment: Deployment) -> None:
        if pool.config.routing == "sticky":
            who = sticky_identity(req)
            if who is not None:
                await self.state.sticky_set(sticky_key(pool, who), deployment.label, STICKY_TTL)

    async def record(self, pool: ModelPool, deployment: Deployment, *, ok: bool) -> None:
        """Feed the cooldown: `allowed_fails` consecutive failures take the deployment out for `cooldown`."""
        key = cooldown_key(deployment)
        if ok:
            if deployment.maybe_cooling or deployment.recent_failures:
                deployment.recent_failures = 0
                deployment.maybe_cooling = False
                await self.state.record_success(key)
            return
        if len(pool.deployments) < 2 and not pool.config.fallbacks:
            return  # nowhere else to send traffic: a lone deployment is never taken out
        deployment.recent_failures += 1
        self._healthy_until.pop(deployment.label, None)
        failures = await self.state.record_failure(key)
        if failures >= pool.config.allowed_fails:
            deployment.maybe_cooling = True
            await self.state.start_cooldown(key, pool.config.cooldown)
