"""What is known about one request when it ends, and the one place that turns it into metrics, the live
dashboard's numbers, a usage record and an access-log line — exactly once per request, off the hot path."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec

from sluicegate.observe import access_log
from sluicegate.observe.histogram import LocalHistogram
from sluicegate.observe.live import LiveStats
from sluicegate.observe.metrics import Metrics
from sluicegate.observe.usage import UsageRecord, UsageRecorder
from sluicegate.providers.base import Usage
from sluicegate.types import GatewayError, GatewayRequest, Outcome

_encode = msgspec.json.Encoder()


@dataclass(slots=True)
class RequestRecord:
    req: GatewayRequest
    model: str  # public model name as label: the configured name (a pattern for wildcard routes)
    outcome: Outcome = Outcome.COMPLETED
    status: int = 200
    deployment: str | None = None
    attempts: int = 0
    ttft: float | None = None
    ended: float = 0.0
    usage: Usage | None = None
    finish_reason: str | None = None
    bytes_sent: int = 0
    client_disconnected: bool = False
    sha256: str | None = None
    gaps: LocalHistogram = field(default_factory=LocalHistogram)
    accounted: bool = False

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.req.arrived)


def annotate(error: GatewayError, record: RequestRecord) -> GatewayError:
    """Say on an error response which deployment was tried last and after how many attempts."""
    if record.deployment is not None:
        error.headers["x-sluicegate-deployment"] = record.deployment
    if record.attempts:
        error.headers["x-sluicegate-attempts"] = str(record.attempts)
    return error


class Accountant:
    def __init__(self, metrics: Metrics, live: LiveStats | None = None, usage: UsageRecorder | None = None,
                 *, access_log_enabled: bool = True, metrics_enabled: bool = True) -> None:
        self.metrics = metrics
        self.metrics_enabled = metrics_enabled
        self.live = live
        self.usage = usage
        self.access_log_enabled = access_log_enabled

    def started(self, record: RequestRecord) -> None:
        if self.live is not None:
            self.live.request_started(record.model)

    def rejected(self, model: str, reason: str) -> None:
        if self.live is not None:
            self.live.rejected(model, reason)

    def finish(self, record: RequestRecord) -> None:
        """Called once per request from a `finally`; a second call is a no-op."""
        if record.accounted:
            return
        record.accounted = True
        gaps = record.gaps
        itl_mean = gaps.total / gaps.count if gaps.count else None
        itl_p50 = gaps.quantile(0.5)
        itl_p95 = gaps.quantile(0.95)
        itl_p99 = gaps.quantile(0.99) if self.live is not None else None
        if self.metrics_enabled:
            self._metrics(record)
        usage = record.usage
        completion = usage.completion_tokens if usage is not None else None
        if self.live is not None:
            self.live.request_ended(record.model, record.outcome.value, record.ttft, itl_p50, itl_p99, completion,
                                    record.duration)
        self._record(record, itl_mean, itl_p95)

    def refused(self, record: RequestRecord) -> None:
        """A request answered with an error before routing (no model to count it under, no stream): counted in
        `sluicegate_requests_total` under `record.model` ("(unknown)"), then its usage record and access-log line.
        Once per request, as `finish`."""
        if record.accounted:
            return
        record.accounted = True
        if self.metrics_enabled:
            req = record.req
            self.metrics.child(self.metrics.requests, record.model, req.endpoint.value, str(record.status)).inc()
        self._record(record, None, None)

    def _record(self, record: RequestRecord, itl_mean: float | None, itl_p95: float | None) -> None:
        """The usage record and the access-log line."""
        if self.usage is None and not self.access_log_enabled:
            return
        usage = record.usage
        completion = usage.completion_tokens if usage is not None else None
        req = record.req
        entry = UsageRecord(
            request_id=req.id, ts=req.arrived_wall, key_name=req.key_name, model=req.model,
            deployment=record.deployment, endpoint=req.endpoint.value, attempts=record.attempts,
            status=record.status, outcome=record.outcome.value, ttft_s=record.ttft, itl_mean_s=itl_mean,
            itl_p95_s=itl_p95, duration_s=record.duration,
            prompt_tokens=usage.prompt_tokens if usage is not None else None, completion_tokens=completion,
            finish_reason=record.finish_reason, bytes_sent=record.bytes_sent,
            client_disconnected=record.client_disconnected, sha256=record.sha256, stream=req.stream,
            client_request_id=req.client_request_id,
        )
        if self.usage is not None:
            self.usage.submit(entry)
        if self.access_log_enabled and access_log.enabled():
            access_log.write(_encode.encode(entry))

    def _metrics(self, record: RequestRecord) -> None:
        metrics = self.metrics
        child = metrics.child
        model = record.model
        req = record.req
        outcome = record.outcome.value
        child(metrics.requests, model, req.endpoint.value, str(record.status)).inc()
        if req.stream:
            child(metrics.streams, model, outcome).inc()
            child(metrics.stream_duration, model, outcome).observe(record.duration)
            if record.bytes_sent:
                child(metrics.bytes_streamed, model).inc(record.bytes_sent)
            record.gaps.flush_into(child(metrics.inter_token, model))
            if record.ttft is not None:
                child(metrics.ttft, model).observe(record.ttft)
        usage = record.usage
        if usage is not None:
            if usage.prompt_tokens:
                child(metrics.tokens, model, "prompt").inc(usage.prompt_tokens)
            if usage.completion_tokens:
                child(metrics.tokens, model, "completion").inc(usage.completion_tokens)


def wall_time() -> float:
    return time.time()
