"""Counters and per-tag request records of the mock upstream, read by tests through /_mock/*.

Times are `time.monotonic()` seconds (CLOCK_MONOTONIC on Linux: comparable across processes).
A request is active from the moment its body is complete until its response ended or its peer closed.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from typing import Any, Final, Literal

RequestState = Literal["streaming", "completed", "peer_closed", "reset", "stalled", "errored", "status"]

MAX_TAGS: Final = 10_000

# States that end a response with its last byte written.
_WRITTEN_OUT: Final = frozenset({"completed", "errored", "status"})


class RequestRecord:
    """The life of one request; `headers` and `body` are kept only for tagged requests."""

    __slots__ = ("body", "ended", "headers", "path", "peer_closed_at", "started", "state", "tokens_sent")

    def __init__(self, path: str) -> None:
        self.path = path
        self.state: RequestState = "streaming"
        self.tokens_sent = 0
        self.started = time.monotonic()
        self.ended: float | None = None
        self.peer_closed_at: float | None = None
        self.headers: dict[str, str] | None = None
        self.body: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "tokens_sent": self.tokens_sent,
            "started": self.started,
            "ended": self.ended,
            "peer_closed_at": self.peer_closed_at,
            "headers": self.headers or {},
            "body": self.body,
        }


class MockStats:
    """Request counters (reset by /_mock/reset) and the most recent `max_tags` tagged records."""

    def __init__(self, max_tags: int = MAX_TAGS) -> None:
        self._max_tags = max_tags
        self._tags: OrderedDict[str, RequestRecord] = OrderedDict()
        self.active = 0
        self._zero()

    def _zero(self) -> None:
        self.high_water = self.active  # streams still running keep counting
        self.requests = 0
        self.completed = 0
        self.errored = 0
        self.reset_count = 0
        self.peer_closed = 0
        self.by_path: Counter[str] = Counter()
        self.status_counts: Counter[str] = Counter()

    def reset(self) -> None:
        self._zero()
        self._tags.clear()

    def begin(self, record: RequestRecord) -> None:
        self.active += 1
        self.requests += 1
        self.high_water = max(self.high_water, self.active)
        self.by_path[record.path] += 1

    def status_sent(self, status: int) -> None:
        self.status_counts[str(status)] += 1

    def finish(self, record: RequestRecord, state: RequestState) -> None:
        """End `record` in `state` (idempotent: the first ending wins)."""
        if record.ended is not None:
            return
        record.state = state
        record.ended = time.monotonic()
        self.active -= 1
        if state in _WRITTEN_OUT:
            self.completed += 1
        if state == "errored":
            self.errored += 1
        elif state == "reset":
            self.reset_count += 1
        elif state == "peer_closed":
            record.peer_closed_at = record.ended
            self.peer_closed += 1

    def remember(self, tag: str, record: RequestRecord) -> None:
        tags = self._tags
        tags.pop(tag, None)
        tags[tag] = record
        while len(tags) > self._max_tags:
            tags.popitem(last=False)

    def lookup(self, tag: str) -> RequestRecord | None:
        return self._tags.get(tag)

    def snapshot(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "high_water": self.high_water,
            "requests": self.requests,
            "completed": self.completed,
            "errored": self.errored,
            "reset": self.reset_count,
            "peer_closed": self.peer_closed,
            "by_path": dict(self.by_path),
            "status_counts": dict(self.status_counts),
        }
