"""Per-stream histogram accumulation, flushed into Prometheus once per stream.

Observing a Prometheus histogram per event costs a lock and a label lookup; a stream instead counts into a plain
list (one bisect) and adds the counts to the shared histogram when it ends. The exposition is the same.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

# Suited to LLM traffic: 5 ms .. 60 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
)


class LocalHistogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated linearly inside its bucket (exact values are not kept)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for index, n in enumerate(self.counts):
            if n and seen + n >= rank:
                lower = self.bounds[index - 1] if index > 0 else 0.0
                upper = self.bounds[index] if index < len(self.bounds) else lower
                return lower + (upper - lower) * max(0.0, rank - seen) / n
            seen += n
        return self.bounds[-1]

    def flush_into(self, child: Any) -> None:
        """Add the counts to a labelled prometheus_client Histogram child built with the same bounds."""
        if not self.count:
            return
        buckets = child._buckets  # per-bucket (non-cumulative) values; prometheus_client sums them on collect
        for index, n in enumerate(self.counts):
            if n:
                buckets[index].inc(n)
        child._sum.inc(self.total)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0
