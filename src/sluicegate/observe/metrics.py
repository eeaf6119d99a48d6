"""Every Prometheus metric sluicegate exports. docs/metrics.md lists them with labels and what to alert on.

Label values are bounded: model and deployment names come from the config, outcomes and reasons from fixed sets.

With several worker processes (`serve --workers N`) every metric lives in prometheus-client's multiprocess mode:
each worker writes its values to mmap files in one directory and /metrics merges them, so it reports the sum over
workers (gauges say how they merge with `multiprocess_mode`; `live*` modes drop workers that have exited).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

from sluicegate.observe.histogram import LATENCY_BUCKETS
from sluicegate.observe.logsink import LOG_SINK

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class LabelledChildren:
    """`metric.labels(...)` takes a lock and builds tuples on every call; the request path looks children up here.
    Label values are bounded (config names, fixed sets), so the cache is too."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[tuple[int, tuple[str, ...]], Any] = {}

    def __call__(self, metric: Any, *values: str) -> Any:
        key = (id(metric), values)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = metric.labels(*values)
        return found


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.child = LabelledChildren()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sluicegate_requests", "Requests answered, by public model, endpoint and HTTP status sent to the client.",
            ["model", "endpoint", "status"], registry=r)
        self.streams = Counter(
            "sluicegate_streams", "Streams ended, by outcome (exactly one outcome per stream).",
            ["model", "outcome"], registry=r)
        self.streams_in_flight = Gauge(
            "sluicegate_streams_in_flight", "Client streams currently open (admitted, not yet ended).",
            ["model"], registry=r, multiprocess_mode="livesum")
        self.ttft = Histogram(
            "sluicegate_time_to_first_token_seconds",
            "Time from request arrival to the first upstream event sent to the client.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram(
            "sluicegate_inter_token_latency_seconds",
            "Gap between consecutive upstream reads that carried at least one event.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.stream_duration = Histogram(
            "sluicegate_stream_duration_seconds", "Whole-stream duration, from request arrival to the end.",
            ["model", "outcome"], buckets=DURATION_BUCKETS, registry=r)
        self.tokens = Counter(
            "sluicegate_tokens", "Tokens reported by upstream usage, by kind (prompt|completion).",
            ["model", "kind"], registry=r)
        self.bytes_streamed = Counter(
            "sluicegate_stream_bytes", "Bytes of event stream written to clients.", ["model"], registry=r)
        self.upstream_in_flight = Gauge(
            "sluicegate_upstream_in_flight", "Upstream requests currently open, per deployment.",
            ["deployment"], registry=r, multiprocess_mode="livesum")
        self.upstream_requests = Counter(
            "sluicegate_upstream_requests", "Upstream attempts by deployment and result.",
            ["deployment", "result"], registry=r)
        self.upstream_first_chunk = Histogram(
            "sluicegate_upstream_first_chunk_seconds",
            "Time from sending the upstream request to its first complete event, per deployment.",
            ["deployment"], buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter(
            "sluicegate_retries", "Retry decisions: succeeded|failed|exhausted|budget_exhausted.",
            ["model", "outcome"], registry=r)
        self.retry_budget_available = Gauge(
            "sluicegate_retry_budget_available", "Retry tokens currently available in the model's pool.",
            ["model"], registry=r, multiprocess_mode="livemax")
        self.rejections = Counter(
            "sluicegate_concurrency_rejections",
            "Requests refused admission, by scope (worker|deployment|key|model) and reason.",
            ["scope", "name", "reason"], registry=r)
        self.deadline_hits = Counter(
            "sluicegate_deadline_hits", "Deadlines that fired, by kind, including ones that were retried.",
            ["model", "kind"], registry=r)
        self.heartbeats = Counter(
            "sluicegate_heartbeats", "SSE keep-alive comments written to clients.", ["model"], registry=r)
        self.loop_lag = Gauge(
            "sluicegate_event_loop_lag_seconds",
            "How late the worker gets its work done, last sample: a timer's lateness or, if longer, a probe's wait "
            "in the relay queue.",
            registry=r, multiprocess_mode="livemax")
        self.state_available = Gauge(
            "sluicegate_state_available",
            "1 while shared state (Redis) answers, 0 while degraded (state.on_unavailable applies); "
            "always 1 with the memory backend.",
            registry=r, multiprocess_mode="livemin")
        self.usage_dropped = Counter(
            "sluicegate_usage_records_dropped", "Usage records not written, by reason (queue_full, ...).",
            ["reason"], registry=r)
        self.log_dropped = Counter(
            "sluicegate_log_records_dropped", "Log lines (access log included) not written because stderr was not "
            "being read fast enough.", registry=r)
        LOG_SINK.report_drops_to(self.log_dropped)
        self.overhead = Histogram(
            "sluicegate_gateway_overhead_seconds",
            "Time spent in the gateway from request arrival until the upstream request was sent.",
            buckets=OVERHEAD_BUCKETS, registry=r)

    def exposition_registry(self) -> CollectorRegistry:
        """What /metrics collects from: this process's registry, or with several workers a registry that merges
        every worker's files (built per scrape, as prometheus-client's multiprocess mode requires)."""
        directory = multiprocess_dir()
        if directory is None:
            return self.registry
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        return merged


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def enable_multiprocess(directory: str) -> None:
    """Switch this process, and the workers it forks later, to multiprocess metrics written under `directory`.

    Call it in the master before any metric is created. prometheus-client picks its value class when it is first
    imported, which may already have happened, so the class is switched here as well as the environment."""
    os.environ[MULTIPROC_DIR_ENV] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def mark_worker_dead(pid: int) -> None:
    """Forget a worker's live gauges (its streams in flight are gone); its counters stay in the sums."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
