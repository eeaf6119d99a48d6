"""What is known about one request when it ends, and the one place that turns it into metrics (exactly once)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sluicegate.observe.histogram import LocalHistogram
from sluicegate.observe.metrics import Metrics
from sluicegate.providers.base import Usage
from sluicegate.types import GatewayError, GatewayRequest, Outcome


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


def account(record: RequestRecord, metrics: Metrics) -> None:
    """Called once per request from a `finally`; a second call is a no-op."""
    if record.accounted:
        return
    record.accounted = True
    model = record.model
    req = record.req
    metrics.requests.labels(model, req.endpoint.value, str(record.status)).inc()
    if not req.stream:
        metrics.streams.labels(model, record.outcome.value)  # keep the series visible; non-streams are not counted
    else:
        metrics.streams.labels(model, record.outcome.value).inc()
        metrics.stream_duration.labels(model, record.outcome.value).observe(record.duration)
        if record.bytes_sent:
            metrics.bytes_streamed.labels(model).inc(record.bytes_sent)
        record.gaps.flush_into(metrics.inter_token.labels(model))
    if record.ttft is not None:
        metrics.ttft.labels(model).observe(record.ttft)
    usage = record.usage
    if usage is not None:
        if usage.prompt_tokens:
            metrics.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            metrics.tokens.labels(model, "completion").inc(usage.completion_tokens)
