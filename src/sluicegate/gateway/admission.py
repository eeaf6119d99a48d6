"""Admission before work: the worker cap, the API key's rate and concurrency caps, and per-deployment slots.

A slot is taken before any upstream work and released exactly once on every path: `Slots.release()` is
idempotent and never awaits (an in-process slot is released on the spot, a shared one by a task of its own), so a
cancelled request cannot skip or interrupt it.
Waiting is bounded by the queue deadline: 0 = refuse at once (429 + Retry-After).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from sluicegate.observe.metrics import Metrics
from sluicegate.state.base import StateBackend, StateUnavailable
from sluicegate.state.memory import MemoryBackend
from sluicegate.types import GatewayError, Outcome

WORKER_KEY = "worker"
RETRY_AFTER_FULL = 1.0


@dataclass(frozen=True, slots=True)
class ClientKey:
    """An authenticated API key, as admission and routing see it (never the secret itself)."""

    name: str
    models: tuple[str, ...]
    max_concurrent: int
    rpm: int
    admin: bool

    def allows(self, model: str) -> bool:
        if not self.models:
            return True
        for pattern in self.models:
            if pattern == model:
                return True
            if "*" in pattern:
                prefix, _, suffix = pattern.partition("*")
                if model.startswith(prefix) and model.endswith(suffix):
                    return True
        return False


class Slots:
    """The slots one request holds. Each is released once, whatever ends the request."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[tuple[StateBackend, str, str]] = []

    def add(self, backend: StateBackend, key: str, holder: str) -> None:
        self._held.append((backend, key, holder))

    def release(self, key: str | None = None, holder: str | None = None) -> None:
        """Release what matches (everything by default); each slot once, however often this is called."""
        keep = []
        for backend, held_key, held_by in self._held:
            if (key is None or held_key == key) and (holder is None or held_by == holder):
                backend.release_slot_nowait(held_key, held_by)
            else:
                keep.append((backend, held_key, held_by))
        self._held = keep


def rejected(scope: str, name: str, message: str, retry_after: float = RETRY_AFTER_FULL) -> GatewayError:
    return GatewayError(429, message, type="rate_limit_error", code=f"{scope}_at_capacity", outcome=Outcome.REJECTED,
                        retry_after=retry_after)


class Admission:
    def __init__(self, state: StateBackend, metrics: Metrics, max_streams: int) -> None:
        self.state = state
        self.local = MemoryBackend()  # the worker cap protects this process's event loop: never shared
        self.metrics = metrics
        self.max_streams = max_streams

    async def _acquire(self, backend: StateBackend, key: str, cap: int, holder: str, wait: float,
                       scope: str, name: str, *, count: bool = True) -> bool:
        try:
            ok = await backend.acquire_slot(key, cap, holder, max(0.0, wait))
        except asyncio.CancelledError:
            self.metrics.rejections.labels(scope, name, "client_gone").inc()
            raise
        except StateUnavailable:
            raise self._state_unavailable(scope, name) from None
        if not ok and count:
            self.metrics.rejections.labels(scope, name, "queue_timeout").inc()
        return ok

    async def admit(self, request_id: str, key: ClientKey | None, queue_timeout: float) -> Slots:
        """Worker slot and key slot (and the key's rate); raises GatewayError(429) when they are not to be had."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + queue_timeout
        slots = Slots()
        try:
            if key is not None and key.rpm:
                try:
                    allowed, retry_after = await self.state.hit_rate(f"rpm:{key.name}", key.rpm, 60.0)
                except StateUnavailable:
                    self.metrics.rejections.labels("key", key.name, "state_unavailable").inc()
                    raise GatewayError(503, "Shared rate-limit state (Redis) is unavailable; retry shortly.",
                                       type="server_error", code="state_unavailable", outcome=Outcome.REJECTED,
                                       retry_after=RETRY_AFTER_FULL) from None
                if not allowed:
                    self.metrics.rejections.labels("key", key.name, "rate_limit").inc()
                    raise GatewayError(429, f"API key {key.name!r} is over its limit of {key.rpm} requests per minute.",
                                       type="rate_limit_error", code="rate_limit_exceeded", outcome=Outcome.REJECTED,
                                       retry_after=max(1.0, retry_after))
            if self.max_streams:
                if not await self._acquire(self.local, WORKER_KEY, self.max_streams, request_id,
                                           deadline - loop.time(), "worker", "worker"):
                    raise rejected("worker", "worker", f"The gateway worker is at its limit of {self.max_streams} "
                                   "concurrent requests (server.max_streams); retry shortly.")
                slots.add(self.local, WORKER_KEY, request_id)
            if key is not None and key.max_concurrent:
                slot_key = f"key:{key.name}"
                if not await self._acquire(self.state, slot_key, key.max_concurrent, request_id,
                                           deadline - loop.time(), "key", key.name):
                    raise rejected("key", key.name, f"API key {key.name!r} is at its limit of {key.max_concurrent} "
                                   "concurrent requests; retry shortly.")
                slots.add(self.state, slot_key, request_id)
        except BaseException:
            slots.release()
            raise
        return slots

    def _state_unavailable(self, scope: str, name: str) -> GatewayError:
        self.metrics.rejections.labels(scope, name, "state_unavailable").inc()
        return GatewayError(503, "Shared admission state (Redis) is unavailable; retry shortly.", type="server_error",
                            code="state_unavailable", outcome=Outcome.REJECTED, retry_after=RETRY_AFTER_FULL)

    async def acquire_deployment(self, label: str, cap: int, holder: str, wait: float, *, count: bool = True) -> bool:
        """count=False: a probe that may be retried; the caller counts the request's rejection once."""
        return await self._acquire(self.state, f"deployment:{label}", cap, holder, wait, "deployment", label,
                                   count=count)

    async def wait_for_any_deployment(self, wanted: Sequence[tuple[str, int]], holder: str, wait: float) -> int | None:
        """Queues `holder` for a slot of every (label, cap) in `wanted` at once, for at most `wait` seconds, and
        returns the position of the one it got (the earliest in `wanted` if several came at once; the others are
        handed back), or None if none came in time (the caller counts that). Each queue serves in arrival order,
        so whichever deployment frees a slot first gives it to the request that has waited longest."""
        if len(wanted) == 1:
            label, cap = wanted[0]
            return 0 if await self.acquire_deployment(label, cap, holder, wait, count=False) else None
        keys = [f"deployment:{label}" for label, _ in wanted]
        waits = [asyncio.ensure_future(self.state.acquire_slot(key, cap, holder, wait))
                 for key, (_, cap) in zip(keys, wanted, strict=True)]
        won: int | None = None
        try:
            pending: set[asyncio.Future[bool]] = set(waits)
            while pending and won is None:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                ended = [(i, task) for i, task in enumerate(waits) if task.done()]
                won = next((i for i, task in ended if task.exception() is None and task.result()), None)
                failed = next((task.exception() for _, task in ended if task.exception() is not None), None)
                if won is None and failed is not None:
                    raise failed  # a slot granted in the same turn wins over another wait's failure
        except asyncio.CancelledError:
            self.metrics.rejections.labels("deployment", wanted[0][0], "client_gone").inc()
            raise
        except StateUnavailable:
            raise self._state_unavailable("deployment", wanted[0][0]) from None
        finally:
            for i, task in enumerate(waits):
                if i != won:
                    # A wait cancelled while queued hands its grant back itself; one that got its slot just before
                    # (or while) the winner did is handed back when it ends.
                    task.cancel()
                    task.add_done_callback(partial(_hand_back, self.state, keys[i], holder))
        return won


def _hand_back(backend: StateBackend, key: str, holder: str, wait: asyncio.Future[bool]) -> None:
    if not wait.cancelled() and wait.exception() is None and wait.result():
        backend.release_slot_nowait(key, holder)
