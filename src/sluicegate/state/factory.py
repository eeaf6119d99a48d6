"""Builds the configured state backend."""

from __future__ import annotations

from typing import Literal

from sluicegate.state.base import OnUnavailable, StateBackend
from sluicegate.state.memory import MemoryBackend
from sluicegate.state.redis_backend import RedisBackend


def make_backend(
    kind: Literal["memory", "redis"],
    *,
    redis_url: str | None = None,
    lease_ttl: float = 15.0,
    redis_timeout: float = 1.0,
    on_unavailable: str = "fail_open",
    expected_instances: int = 1,
    key_prefix: str = "sluicegate:",
) -> StateBackend:
    """A backend ready for `await backend.start()`. The Redis settings are ignored for "memory"."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "redis":
        if not redis_url:
            raise ValueError("state.backend is redis but state.redis_url is not set")
        return RedisBackend(
            redis_url,
            key_prefix=key_prefix,
            lease_ttl=lease_ttl,
            op_timeout=redis_timeout,
            on_unavailable=_on_unavailable(on_unavailable),
            expected_instances=expected_instances,
        )
    raise ValueError(f"state.backend must be memory or redis, got {kind!r}")


def _on_unavailable(value: str) -> OnUnavailable:
    if value == "fail_open":
        return "fail_open"
    if value == "fail_closed":
        return "fail_closed"
    raise ValueError(f"state.on_unavailable must be fail_open or fail_closed, got {value!r}")
