"""The state backend contract shared by the in-memory and the Redis backend.

Every operation is async so both backends share one API; the memory backend only ever suspends to wait for a
slot. Semantics are identical across backends; where Redis differs (leases, degraded mode) it says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol

OnUnavailable = Literal["fail_open", "fail_closed"]

AvailabilityListener = Callable[[bool], None]
"""Called with False when shared state becomes unavailable and with True when it is back: once per transition."""

FAILURE_MEMORY_S = 3600.0
"""A consecutive-failure counter with no new failure for this long starts again from zero."""

PROBATION_MAX_S = 3600.0
"""A key stays on probation (cooldown over, no success yet) at most this long after its cooldown ends."""


class StateUnavailable(Exception):
    """Shared state cannot be reached and the backend is configured to refuse (fail_closed), or it was closed."""


class CooldownStatus(NamedTuple):
    """Where a key stands in its cooldown cycle.

    remaining > 0: cooling down, take no traffic. remaining == 0 and on_probation: the cooldown is over but no
    success has been recorded since; let one probe through (`try_acquire_probe`). Neither: healthy.
    """

    remaining: float
    on_probation: bool


class StateBackend(Protocol):
    """Shared counters, slot leases, rate windows, retry budgets, cooldowns and sticky assignments.

    Slots: `acquire_slot` waits up to `timeout` seconds (0 = try once) for one of `cap` slots in group `key`;
    waiters are served first come, first served (per process for Redis; across processes whoever asks Redis first
    after a release wins). A holder holds at most one slot per key: acquiring again with the same holder returns
    True without taking a second slot. Cancelling a waiting acquire leaves no slot taken. `release_slot` is
    idempotent; `release_slot_nowait` does the same without awaiting (for callers that must not be interrupted: at
    once in process, by the backend's own background task when the release needs a round trip). `cap` must be
    >= 1 (an unlimited cap should not call acquire at all).

    Rate windows: `hit_rate` counts one hit against `limit` per `window_s` with a sliding-window counter (the
    previous fixed window's count weighted by how much of it still overlaps the sliding window); refused hits are
    not counted. Returns (allowed, seconds until a hit would be allowed if no one else hits meanwhile).

    Retry budget (see `sluicegate.state.budget`): every request deposits `ratio` tokens, every retry withdraws 1,
    the balance also refills `min_per_second` tokens per second, is capped, and starts with one second of floor.

    Cooldowns: `record_failure` counts consecutive failures (reset by `record_success`, forgotten after
    FAILURE_MEMORY_S without failures); `start_cooldown` takes the key out for `seconds` and puts it on
    probation until a success; `try_acquire_probe` lets exactly one caller (cluster-wide) per `ttl` through
    while on probation after the cooldown.

    Sticky: `sticky_set` stores a value for `ttl` seconds; `sticky_get` returns it or None.
    """

    @property
    def available(self) -> bool:
        """False while shared state is unreachable (always True for the memory backend)."""
        ...

    def add_availability_listener(self, listener: AvailabilityListener) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    # `timeout` is the queue deadline, part of the contract (0 = try once); a cancel scope cannot say that.
    async def acquire_slot(self, key: str, cap: int, holder: str, timeout: float) -> bool: ...  # noqa: ASYNC109

    async def release_slot(self, key: str, holder: str) -> None: ...

    def release_slot_nowait(self, key: str, holder: str) -> None: ...

    async def in_use(self, key: str) -> int: ...

    async def hit_rate(self, key: str, limit: int, window_s: float) -> tuple[bool, float]: ...

    async def budget_deposit(self, key: str, ratio: float, min_per_second: float) -> None: ...

    async def budget_try_withdraw(self, key: str, ratio: float, min_per_second: float) -> bool: ...

    async def budget_available(self, key: str, ratio: float, min_per_second: float) -> float: ...

    async def record_failure(self, key: str) -> int: ...

    async def record_success(self, key: str) -> None: ...

    async def start_cooldown(self, key: str, seconds: float) -> None: ...

    async def cooldown_remaining(self, key: str) -> float: ...

    async def cooldown_status(self, key: str) -> CooldownStatus: ...

    async def try_acquire_probe(self, key: str, ttl: float) -> bool: ...

    async def sticky_get(self, key: str) -> str | None: ...

    async def sticky_set(self, key: str, value: str, ttl: float) -> None: ...


def check_slot_request(cap: int, timeout: float) -> None:
    if cap < 1:
        raise ValueError(f"slot cap must be >= 1, got {cap}")
    if timeout < 0:
        raise ValueError(f"slot wait timeout must be >= 0, got {timeout}")


def check_rate_request(limit: int, window_s: float) -> None:
    if limit < 1:
        raise ValueError(f"rate limit must be >= 1, got {limit}")
    if window_s <= 0:
        raise ValueError(f"rate window must be > 0 s, got {window_s}")


def check_budget_request(ratio: float, min_per_second: float) -> None:
    if ratio < 0:
        raise ValueError(f"retry budget ratio must be >= 0, got {ratio}")
    if min_per_second < 0:
        raise ValueError(f"retry budget min_per_second must be >= 0, got {min_per_second}")


def check_positive_seconds(name: str, seconds: float) -> None:
    if seconds <= 0:
        raise ValueError(f"{name} must be > 0 s, got {seconds}")
