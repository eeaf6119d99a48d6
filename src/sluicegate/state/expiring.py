"""A dict whose entries expire, for the memory backend's per-key state (sticky, cooldowns, rate windows).

Expired entries are invisible at once and physically dropped by a sweep that runs once the writes since the last
sweep reach the number of entries that survived it (at least SWEEP_MIN_WRITES). A sweep then costs at most twice
the writes that paid for it (amortised O(1) per write), and the map holds at most about twice its live entries.
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")

SWEEP_MIN_WRITES = 1024


class ExpiringMap(Generic[V]):
    __slots__ = ("_entries", "_sweep_after", "_writes_since_sweep")

    def __init__(self) -> None:
        self._entries: dict[str, tuple[V, float]] = {}
        self._writes_since_sweep = 0
        self._sweep_after = SWEEP_MIN_WRITES

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at <= now:
            del self._entries[key]
            return None
        return value

    def set(self, key: str, value: V, expires_at: float, now: float) -> None:
        self._entries[key] = (value, expires_at)
        self._writes_since_sweep += 1
        if self._writes_since_sweep >= self._sweep_after:
            self.sweep(now)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def sweep(self, now: float) -> None:
        expired = [key for key, (_, expires_at) in self._entries.items() if expires_at <= now]
        for key in expired:
            del self._entries[key]
        self._writes_since_sweep = 0
        self._sweep_after = max(SWEEP_MIN_WRITES, len(self._entries))
