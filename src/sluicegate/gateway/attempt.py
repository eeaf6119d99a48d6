"""One upstream attempt: connect, send, and read until the first complete event (or the whole body).

Nothing has reached the client while an attempt runs, so every failure here is an `AttemptFailed` carrying the
clean HTTP error the client would get and the retry condition it matches (config `retry.on`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import yarl

from sluicegate.gateway.routing import Deployment
from sluicegate.observe.metrics import Metrics
from sluicegate.providers.base import StreamCodec
from sluicegate.types import GatewayError, GatewayRequest, Outcome
from sluicegate.wire.errors import WireError

ERROR_BODY_LIMIT = 64 * 1024


class AttemptFailed(Exception):
    def __init__(self, condition: str | int, error: GatewayError) -> None:
        super().__init__(error.message)
        self.condition = condition  # matches config retry.on: connect_error, reset, 503, ...
        self.error = error


class UpstreamCall:
    """An open upstream response, counted in the deployment's in-flight numbers until `close()` (called once)."""

    __slots__ = ("_closed", "_metrics", "_on_close", "deployment", "response")

    def __init__(self, deployment: Deployment, metrics: Metrics, on_close: Callable[[], None]) -> None:
        self.deployment = deployment
        self.response: aiohttp.ClientResponse | None = None
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
        if self.response is not None:
            if reuse:
                self.response.release()
            else:
                self.response.close()


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
    session: aiohttp.ClientSession, req: GatewayRequest, deployment: Deployment, upstream_model: str, metrics: Metrics,
    read_bufsize: int, on_close: Callable[[], None],
) -> UpstreamCall:
    """Connect and send; on return the response status and headers are in. Non-200 -> AttemptFailed.
    `on_close` runs once when the call is closed (it releases the deployment slot)."""
    adapter = deployment.adapter
    upstream = adapter.build_request(req, deployment.config, upstream_model)
    call = UpstreamCall(deployment, metrics, on_close)
    if not req.first_sent:
        req.first_sent = time.monotonic()
        metrics.overhead.observe(req.first_sent - req.arrived)
    try:
        call.response = await session.post(
            # encoded=True: a signed URL (SigV4) must go out exactly as it was built and signed.
            yarl.URL(upstream.url, encoded=True), data=upstream.body, headers=upstream.headers,
            read_bufsize=read_bufsize,
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=deployment.timeouts.connect),
        )
    except aiohttp.ConnectionTimeoutError:
        call.close()
        raise AttemptFailed("timeout_connect", GatewayError(
            504, f"Timed out connecting to the upstream after {deployment.timeouts.connect:g}s.",
            type="timeout", code="timeout_connect", outcome=Outcome.TIMEOUT_CONNECT)) from None
    except (aiohttp.ClientConnectionError, OSError) as exc:
        call.close()
        raise AttemptFailed("connect_error", GatewayError(
            502, f"Could not reach the upstream: {type(exc).__name__}.", type="upstream_error",
            code="upstream_connect_error")) from None
    except BaseException:
        call.close()
        raise
    response = call.response
    if response.status != 200:
        try:
            body = await response.content.read(ERROR_BODY_LIMIT)
        except (aiohttp.ClientError, OSError):
            body = b""
        call.close()
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error = adapter.error_from_response(response.status, body, retry_after)
        # The adapter's status is the condition: providers' own codes (Anthropic's 529) map to the standard ones.
        raise AttemptFailed(error.status, error)
    return call


async def read_first_event(call: UpstreamCall, req: GatewayRequest, max_event_bytes: int,
                           read_size: int) -> StreamStart:
    """Read until the codec has the first complete event. The caller's deadline bounds the wait."""
    assert call.response is not None
    codec = call.deployment.adapter.stream_codec(req, max_event_bytes)
    content = call.response.content
    first = b""
    try:
        while not codec.started:
            data = await content.read(read_size)
            if not data:
                raise AttemptFailed("reset", GatewayError(
                    502, "The upstream ended the stream before sending any event.", type="upstream_error",
                    code="upstream_empty_stream"))
            first = codec.feed(data)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError):
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


async def read_body(call: UpstreamCall) -> bytes:
    assert call.response is not None
    try:
        return await call.response.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError):
        call.close()
        raise AttemptFailed("reset", GatewayError(
            502, "The upstream connection broke while sending the response.", type="upstream_error",
            code="upstream_reset")) from None
