"""Live per-model statistics for the dashboard: updated once per request, summarised once per second.

Each update lands in a 1-second bucket held in a ring, so the per-request cost is a few integer adds and no
allocation in steady state; `snapshot` folds the rings into the JSON the page shows.

Memory is bounded whatever the request rate. Per model (at most MAX_MODELS; later names fold into OTHER_MODEL):
- `window_seconds + 1` counter buckets, each with an outcome dict and a rejection dict whose sizes are bounded by
  the gateway's fixed sets of outcomes and rejection reasons;
- PERCENTILE_SECONDS latency buckets, each with three sparse histograms (TTFT, per-request inter-token p50 and p99)
  of at most HISTOGRAM_BINS (384) bins: at most 60 x 3 x 384 counters per model.
Latencies are binned 16 to an octave (linearly within it) from 0.1 ms to 1000 s (values outside are clamped), so a
reported percentile is within 3.2% of the true one.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Iterable
from typing import Any

MAX_MODELS = 64
OTHER_MODEL = "(other)"
PERCENTILE_SECONDS = 60  # TTFT and inter-token percentiles cover this many recent seconds
RATE_SECONDS = 10  # requests/s and tokens/s are averaged over this many complete seconds
COMPLETED = "completed"

_LO = 1e-4
_HI = 1e3
_SUB_BINS = 16  # linear bins per octave (a float's mantissa is split in 16): <= 3.2% from the bin's middle
_frexp = math.frexp
HISTOGRAM_BINS = (math.frexp(_HI)[1] - math.frexp(_LO)[1] + 1) * _SUB_BINS

Histogram = dict[int, int]


def _observe(hist: Histogram, value: float) -> None:
    if value < _LO:
        value = _LO
    elif value > _HI:
        value = _HI
    mantissa, exponent = _frexp(value)  # value = mantissa * 2**exponent, 0.5 <= mantissa < 1
    key = exponent * _SUB_BINS + int(mantissa * 2 * _SUB_BINS) - _SUB_BINS
    hist[key] = hist.get(key, 0) + 1


def _bin_value(key: int) -> float:
    """The middle of a bin."""
    exponent, sub = divmod(key, _SUB_BINS)
    return math.ldexp((sub + _SUB_BINS + 0.5) / (2 * _SUB_BINS), exponent)


def _percentiles(hist: Histogram, quantiles: tuple[float, ...]) -> list[float | None]:
    """Nearest-rank percentiles of a binned histogram."""
    count = sum(hist.values())
    if not count:
        return [None] * len(quantiles)
    ranks = [max(1, math.ceil(q * count)) for q in quantiles]
    out: list[float | None] = [None] * len(quantiles)
    seen = 0
    for key in sorted(hist):
        seen += hist[key]
        for index, rank in enumerate(ranks):
            if out[index] is None and seen >= rank:
                out[index] = _bin_value(key)
    return out


def _merge(into: Histogram, hist: Histogram) -> None:
    for key, n in hist.items():
        into[key] = into.get(key, 0) + n


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


class _Second:
    """Counters of one model for one second."""

    __slots__ = ("duration_sum", "ended", "outcomes", "rejected", "rejections", "second", "started", "tokens",
                 "ttft_count", "ttft_sum")

    def __init__(self) -> None:
        self.second = -1
        self.started = 0
        self.ended = 0
        self.tokens = 0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.duration_sum = 0.0
        self.rejected = 0
        self.outcomes: dict[str, int] = {}
        self.rejections: dict[str, int] = {}

    def reset(self, second: int) -> None:
        self.second = second
        self.started = self.ended = self.tokens = self.ttft_count = self.rejected = 0
        self.ttft_sum = self.duration_sum = 0.0
        self.outcomes.clear()
        self.rejections.clear()


class _Latency:
    """Latency histograms of one model for one second."""

    __slots__ = ("itl_p50", "itl_p99", "second", "ttft")

    def __init__(self) -> None:
        self.second = -1
        self.ttft: Histogram = {}
        self.itl_p50: Histogram = {}
        self.itl_p99: Histogram = {}

    def reset(self, second: int) -> None:
        self.second = second
        self.ttft.clear()
        self.itl_p50.clear()
        self.itl_p99.clear()


class _Model:
    __slots__ = ("in_flight", "latency", "seconds")

    def __init__(self, slots: int) -> None:
        self.in_flight = 0
        self.seconds = [_Second() for _ in range(slots)]
        self.latency = [_Latency() for _ in range(PERCENTILE_SECONDS)]


class _Summary:
    """What `snapshot` accumulates for one model, or for all of them (the total)."""

    def __init__(self, window: int) -> None:
        self.in_flight = 0
        self.requests = [0] * window
        self.tokens = [0] * window
        self.errors = [0] * window
        self.in_flight_series = [0] * window
        self.ttft_sum = [0.0] * window
        self.ttft_count = [0] * window
        self.outcomes: dict[str, int] = {}
        self.rejections: dict[str, int] = {}
        self.ttft: Histogram = {}
        self.itl_p50: Histogram = {}
        self.itl_p99: Histogram = {}
        self.recent_ended = 0
        self.recent_duration = 0.0

    def add(self, other: _Summary) -> None:
        self.in_flight += other.in_flight
        self.requests = list(map(operator.add, self.requests, other.requests))
        self.tokens = list(map(operator.add, self.tokens, other.tokens))
        self.errors = list(map(operator.add, self.errors, other.errors))
        self.in_flight_series = list(map(operator.add, self.in_flight_series, other.in_flight_series))
        self.ttft_count = list(map(operator.add, self.ttft_count, other.ttft_count))
        self.ttft_sum = list(map(operator.add, self.ttft_sum, other.ttft_sum))
        _add_counts(self.outcomes, other.outcomes)
        _add_counts(self.rejections, other.rejections)
        _merge(self.ttft, other.ttft)
        _merge(self.itl_p50, other.itl_p50)
        _merge(self.itl_p99, other.itl_p99)
        self.recent_ended += other.recent_ended
        self.recent_duration += other.recent_duration

    def to_json(self) -> dict[str, Any]:
        ttft_p50, ttft_p99 = _percentiles(self.ttft, (0.5, 0.99))
        (itl_p50,) = _percentiles(self.itl_p50, (0.5,))
        (itl_p99,) = _percentiles(self.itl_p99, (0.99,))
        recent = slice(-RATE_SECONDS, None)
        return {
            "in_flight": self.in_flight,
            "requests_per_s": _round(sum(self.requests[recent]) / RATE_SECONDS),
            "tokens_per_s": _round(sum(self.tokens[recent]) / RATE_SECONDS),
            "ttft_p50": _round(ttft_p50),
            "ttft_p99": _round(ttft_p99),
            "itl_p50": _round(itl_p50),
            "itl_p99": _round(itl_p99),
            "duration_mean": _round(self.recent_duration / self.recent_ended if self.recent_ended else None),
            "requests": sum(self.outcomes.values()),
            "outcomes": dict(sorted(self.outcomes.items(), key=lambda kv: -kv[1])),
            "rejections": dict(sorted(self.rejections.items(), key=lambda kv: -kv[1])),
            "series": {
                "requests": self.requests,
                "tokens": self.tokens,
                "errors": self.errors,
                "in_flight": self.in_flight_series,
                "ttft_mean": [_round(s / n) if n else None for s, n in zip(self.ttft_sum, self.ttft_count,
                                                                          strict=True)],
            },
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


class LiveStats:
    """Per-worker live statistics. `request_started`/`request_ended`/`rejected` are called once per request;
    `snapshot` once per second while someone watches."""

    def __init__(self, window_seconds: int = 300, clock: Callable[[], float] = time.monotonic) -> None:
        if window_seconds < RATE_SECONDS:
            raise ValueError(f"window_seconds must be at least {RATE_SECONDS}")
        self.window_seconds = window_seconds
        self._slots = window_seconds + 1  # the complete window plus the second in progress
        self.clock = clock  # `snapshot(now)` takes a time on this clock
        self._models: dict[str, _Model] = {}

    def _model(self, model: str) -> _Model:
        stats = self._models.get(model)
        if stats is None:
            if len(self._models) >= MAX_MODELS and model != OTHER_MODEL:
                return self._model(OTHER_MODEL)
            stats = self._models[model] = _Model(self._slots)
        return stats

    def request_started(self, model: str) -> None:
        stats = self._models.get(model) or self._model(model)
        stats.in_flight += 1
        now = int(self.clock())
        bucket = stats.seconds[now % self._slots]
        if bucket.second != now:
            bucket.reset(now)
        bucket.started += 1

    def request_ended(self, model: str, outcome: str, ttft: float | None, itl_p50: float | None,
                      itl_p99: float | None, completion_tokens: int | None, duration: float) -> None:
        stats = self._models.get(model) or self._model(model)
        stats.in_flight -= 1
        now = int(self.clock())
        bucket = stats.seconds[now % self._slots]
        if bucket.second != now:
            bucket.reset(now)
        bucket.ended += 1
        bucket.duration_sum += duration
        outcomes = bucket.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if completion_tokens:
            bucket.tokens += completion_tokens
        if ttft is None and itl_p50 is None and itl_p99 is None:
            return
        latency = stats.latency[now % PERCENTILE_SECONDS]
        if latency.second != now:
            latency.reset(now)
        if ttft is not None:
            bucket.ttft_sum += ttft
            bucket.ttft_count += 1
            _observe(latency.ttft, ttft)
        if itl_p50 is not None:
            _observe(latency.itl_p50, itl_p50)
        if itl_p99 is not None:
            _observe(latency.itl_p99, itl_p99)

    def rejected(self, model: str, reason: str) -> None:
        """An admission rejection; it does not change in_flight (call request_ended too if it was started)."""
        stats = self._models.get(model) or self._model(model)
        now = int(self.clock())
        bucket = stats.seconds[now % self._slots]
        if bucket.second != now:
            bucket.reset(now)
        bucket.rejected += 1
        rejections = bucket.rejections
        rejections[reason] = rejections.get(reason, 0) + 1

    def snapshot(self, now: float) -> dict[str, Any]:
        """Per model and in total: in_flight, requests/s and tokens/s (last RATE_SECONDS complete seconds),
        outcome and rejection counts (the window), TTFT p50/p99 and mean duration (last PERCENTILE_SECONDS), and
        per-second series over the window's complete seconds, oldest first.

        Inter-token percentiles are over streams: itl_p50 is the median of the streams' median gaps, itl_p99 the
        p99 of their p99 gaps (the gateway reports one pair per stream, not every gap)."""
        current = int(now)
        total = _Summary(self.window_seconds)
        models: dict[str, dict[str, Any]] = {}
        for name in sorted(self._models):
            summary = self._summarise(self._models[name], current)
            total.add(summary)
            models[name] = summary.to_json()
        return {
            "window_seconds": self.window_seconds,
            "percentile_seconds": PERCENTILE_SECONDS,
            "rate_seconds": RATE_SECONDS,
            "total": total.to_json(),
            "models": models,
        }

    def _summarise(self, stats: _Model, current: int) -> _Summary:
        window = self.window_seconds
        summary = _Summary(window)
        summary.in_flight = stats.in_flight
        # Walk back from the second in progress; series index `window - 1` is the last complete second.
        in_flight = stats.in_flight
        for age, bucket in enumerate(self._buckets(stats.seconds, current)):
            if bucket is None:
                if age:
                    summary.in_flight_series[window - age] = in_flight
                continue
            _add_counts(summary.outcomes, bucket.outcomes)
            _add_counts(summary.rejections, bucket.rejections)
            if age < PERCENTILE_SECONDS:
                summary.recent_ended += bucket.ended
                summary.recent_duration += bucket.duration_sum
            if age:
                i = window - age
                summary.requests[i] = bucket.ended
                summary.tokens[i] = bucket.tokens
                summary.errors[i] = bucket.ended - bucket.outcomes.get(COMPLETED, 0) + bucket.rejected
                summary.ttft_sum[i] = bucket.ttft_sum
                summary.ttft_count[i] = bucket.ttft_count
                summary.in_flight_series[i] = in_flight
            in_flight += bucket.ended - bucket.started  # in flight at the end of the second before this one
        for age in range(PERCENTILE_SECONDS):
            latency = stats.latency[(current - age) % PERCENTILE_SECONDS]
            if latency.second == current - age:
                for merged, hist in ((summary.ttft, latency.ttft), (summary.itl_p50, latency.itl_p50),
                                     (summary.itl_p99, latency.itl_p99)):
                    if hist:
                        _merge(merged, hist)
        return summary

    def _buckets(self, ring: list[_Second], current: int) -> Iterable[_Second | None]:
        """The buckets of seconds current, current-1, ... current-window (None where nothing happened)."""
        slots = self._slots
        for age in range(slots):
            bucket = ring[(current - age) % slots]
            yield bucket if bucket.second == current - age else None
