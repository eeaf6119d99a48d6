"""Per-stream rate caps (off by default): a token bucket on events and one on bytes. The stream is slowed, not cut."""

from __future__ import annotations


class StreamRateLimiter:
    __slots__ = ("_byte_tokens", "_bytes_per_s", "_event_tokens", "_events_per_s", "_last")

    def __init__(self, events_per_second: float, bytes_per_second: float, now: float) -> None:
        self._events_per_s = events_per_second
        self._bytes_per_s = bytes_per_second
        # Burst = one second's worth, so a stream may catch up briefly but never runs above the cap for long.
        self._event_tokens = events_per_second
        self._byte_tokens = bytes_per_second
        self._last = now

    def delay(self, batch: bytes, now: float) -> float:
        """Charge this batch of SSE events and return how long to wait before sending it (0.0 = now)."""
        elapsed = now - self._last
        self._last = now
        events = (batch.count(b"\n\n") + batch.count(b"\r\n\r\n")) or 1
        nbytes = len(batch)
        wait = 0.0
        if self._events_per_s:
            self._event_tokens = min(self._events_per_s, self._event_tokens + elapsed * self._events_per_s) - events
            if self._event_tokens < 0:
                wait = -self._event_tokens / self._events_per_s
        if self._bytes_per_s:
            self._byte_tokens = min(self._bytes_per_s, self._byte_tokens + elapsed * self._bytes_per_s) - nbytes
            if self._byte_tokens < 0:
                wait = max(wait, -self._byte_tokens / self._bytes_per_s)
        return wait
