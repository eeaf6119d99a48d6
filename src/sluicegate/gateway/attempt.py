"""One upstream attempt: connect, send, and read until the first complete event (or the whole body).

Nothing has reached the client while an attempt runs, so every failure here is an `AttemptFailed` carrying the
clean HTTP error the client would get and the retry condition it matches (config `retry.on`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sluicegate.gateway.routing import Deployment
from sluicegate.observe.metrics import Metrics
from sluicegate.providers.base import StreamCodec
from sluicegate.types import GatewayError, GatewayRequest, Outcome
from sluicegate.upstream.client import UpstreamClient
from sluicegate.upstream.connection import UpstreamConnection
from sluicegate.upstream.errors import UpstreamConnectTimeout, UpstreamError
from sluicegate.wire.errors import WireError

ERROR_BODY_LIMIT = 64 * 1024


class AttemptFailed(Exception):
    def __init__(self, condition: str | int, error: GatewayError) -> None:
        super().__init__(error.message)
        self.condition = condition  # matches config retry.on: connect_error, reset, 503, ...
        self.error = error


class UpstreamCall:
    """An open upstream response, counted in the deployment's in-flight numbers until `close()` (called once)."""

    __slots__ = ("_client", "_closed", "_metrics", "_on_close", "conn", "deployment")

    def __init__(self, client: UpstreamClient, deployment: Deployment, metrics: Metrics,
                 on_close: Callable[[], None]) -> None:
        self.deployment = deployment
        self.conn: UpstreamConnection | None = None
        self._client = client
        self._metrics = metrics
        self._on_close = on_close
        self._closed = False
        deployment.in_flight += 1
        metrics.child(metrics.upstream_in_flight, deployment.label).inc()

    def close(self, *, reuse: bool = False) -> None:
        """reuse=True returns a fully read connection to the pool; otherwise the connection is dropped at once,
        which is how the upstream learns that nobody is reading any more."""
        if self._closed:
            return
        self._closed = True
        self._on_close()
        self.deployment.in_flight -= 1
        self._metrics.child(self._metrics.upstream_in_flight, self.deployment.label).dec()
        if self.conn is not None:
            self._client.release(self.conn, reuse=reuse)


@dataclass(slots=True)
class StreamStart:
    call: UpstreamCall
    codec: StreamCodec
    first: bytes  # the bytes of the first event(s), ready for the client


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form: rare from model servers; treated as absent
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


async def send(
    client: UpstreamClient, req: GatewayRequest, deployment: Deployment, upstream_model: str, metrics: Metrics,
    on_close: Callable[[], None],
) -> UpstreamCall:
    """Connect and send; on return the response status and headers are in. Non-200 -> AttemptFailed.
    `on_close` runs once when the call is closed (it releases the deployment slot)."""
    adapter = deployment.adapter
    await adapter.prepare()
    upstream = adapter.build_request(req, deployment.config, upstream_model)
    call = UpstreamCall(client, deployment, metrics, on_close)
    if not req.first_sent:
        req.first_sent = time.monotonic()
        metrics.overhead.observe(req.first_sent - req.arrived)
    try:
        call.conn = await client.post(upstream.url, upstream.headers, upstream.body,
                                      connect_timeout=deployment.timeouts.connect)
    except UpstreamConnectTimeout:
        call.close()
        raise AttemptFailed("timeout_connect", GatewayError(
            504, f"Timed out connecting to the upstream after {deployment.timeouts.connect:g}s.",
            type="timeout", code="timeout_connect", outcome=Outcome.TIMEOUT_CONNECT)) from None
    except UpstreamError as exc:
        call.close()
        # Refused, unreachable, or closed/reset before any response: nothing was answered, so another attempt
        # may go anywhere (retry condition connect_error).
        raise AttemptFailed("connect_error", GatewayError(
            502, f"Could not reach the upstream: {type(exc).__name__}.", type="upstream_error",
            code="upstream_connect_error")) from None
    except BaseException:
        call.close()
        raise
    conn = call.conn
    if conn.status != 200:
        try:
            body = await conn.read_all(ERROR_BODY_LIMIT)
        except UpstreamError:
            body = b""
        call.close()
        retry_after = parse_retry_after(conn.headers.get("retry-after"))
        # Not kept in a local: this frame, kept alive by the traceback, must not hold what is raised (a cycle).
        raise _status_failed(adapter.error_from_response(conn.status, body, retry_after))
    return call


def _status_failed(error: GatewayError) -> AttemptFailed:
    # The adapter's status is the condition: providers' own codes (Anthropic's 529) map to the standard ones.
    return AttemptFailed(error.status, error)


async def read_first_event(call: UpstreamCall, req: GatewayRequest, max_event_bytes: int) -> StreamStart:
    """Read until the codec has the first complete event. The caller's deadline bounds the wait."""
    assert call.conn is not None
    codec = call.deployment.adapter.stream_codec(req, max_event_bytes)
    conn = call.conn
    first = b""
    try:
        while not codec.started:
            data = await conn.read()
            if not data:
                raise AttemptFailed("reset", GatewayError(
                    502, "The upstream ended the stream before sending any event.", type="upstream_error",
                    code="upstream_empty_stream"))
            first = codec.feed(data)
    except UpstreamError:
        call.close()
        raise AttemptFailed("reset", GatewayError(
            502, "The upstream connection broke before the first event.", type="upstream_error",
            code="upstream_reset")) from None
    except WireError as exc:
        call.close()
        raise AttemptFailed("reset", GatewayError(
            502, f"The upstream sent a malformed stream: {exc}", type="upstream_error",
            code="upstream_malformed")) from None
    except BaseException:
        call.close()
        raise
    if codec.first_error is not None:
        call.close()
        err = codec.first_error
        # A first event that says the request itself is wrong (a 4xx other than 408/429) is not worth retrying.
        condition: str | int = "error_event" if err.status >= 500 or err.status in (408, 429) else err.status
        raise AttemptFailed(condition, GatewayError(
            err.status, f"The upstream reported an error: {err.message}", type=err.type or "upstream_error",
            code=err.code or "upstream_error_event"))
    return StreamStart(call, codec, first)


async def read_body(call: UpstreamCall, limit: int) -> bytes:
    """A whole non-streaming response, at most `limit` bytes (server.max_event_bytes: the response is one event)."""
    assert call.conn is not None
    try:
        body = await call.conn.read_all(limit + 1)
    except UpstreamError:
        call.close()
        raise AttemptFailed("reset", GatewayError(
            502, "The upstream connection broke while sending the response.", type="upstream_error",
            code="upstream_reset")) from None
    if len(body) > limit:
        call.close()
        # Not retried: the same request would get the same answer.
        raise GatewayError(502, f"The upstream's response is larger than server.max_event_bytes ({limit} bytes).",
                           type="upstream_error", code="upstream_response_too_large")
    return body
