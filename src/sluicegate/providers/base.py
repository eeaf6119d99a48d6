"""What every provider adapter offers the gateway: build the upstream request, turn upstream bytes into the
client's bytes (pass-through or translation), and map upstream errors. Adapters know formats, not policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sluicegate.config.schema import DeploymentConfig
from sluicegate.types import GatewayError, GatewayRequest


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes


def upstream_headers(req: GatewayRequest, deployment: DeploymentConfig, auth: dict[str, str], *,
                     stream_type: str = "text/event-stream", extra: dict[str, str] | None = None) -> dict[str, str]:
    """The headers every adapter sends: JSON in, the stream type (or JSON) out, no compression (stream bytes are
    read as they were sent), our request id, the provider's auth, then the deployment's own `headers`."""
    headers = {
        "Content-Type": "application/json",
        "Accept": stream_type if req.stream else "application/json",
        "Accept-Encoding": "identity",
        "X-Request-Id": req.id,
        **(extra or {}),
    }
    if deployment.api_key is not None:
        headers.update(auth)
    headers.update(deployment.headers)
    return headers


def bearer(deployment: DeploymentConfig) -> dict[str, str]:
    key = deployment.api_key
    return {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(slots=True)
class UpstreamEventError:
    """An error event the upstream sent inside a 200 stream."""

    message: str
    code: str | None = None
    type: str | None = None
    status: int = 502  # what the client should see if this happens before the first byte


class StreamCodec(Protocol):
    """Upstream bytes in, client bytes out, for one stream. Until `started` is true the codec is looking for the
    first complete event. `first_error` is set when that first event is an upstream error (the attempt fails
    before anything reached the client, and may be retried); `error` when any error event was seen."""

    started: bool
    first_error: UpstreamEventError | None
    error: UpstreamEventError | None
    usage: Usage | None
    finish_reason: str | None

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes:
        """At upstream EOF: any bytes still owed to the client (e.g. `[DONE]` for translated streams)."""
        ...

    def error_event(self, code: str, message: str) -> bytes:
        """One error event in the client's format, written before closing a committed stream."""
        ...


@dataclass(slots=True)
class NonStreamResult:
    body: bytes
    content_type: str = "application/json"
    usage: Usage | None = None
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class NothingToPrepare:
    """For adapters whose requests need nothing looked up beforehand (everything but Bedrock)."""

    async def prepare(self) -> None:
        return None


class ProviderAdapter(Protocol):
    name: str

    async def prepare(self) -> None:
        """Awaited before `build_request`, on the event loop: whatever must not block it (Bedrock's credential
        lookup) happens here. May raise GatewayError."""
        ...

    def build_request(self, req: GatewayRequest, deployment: DeploymentConfig, upstream_model: str) -> UpstreamRequest:
        ...

    def stream_codec(self, req: GatewayRequest, max_event_bytes: int) -> StreamCodec: ...

    def error_from_response(self, status: int, body: bytes, retry_after: float | None) -> GatewayError:
        """A non-200 upstream answer (before any byte reached the client) as the error the client gets."""
        ...

    def nonstream_result(self, req: GatewayRequest, body: bytes) -> NonStreamResult: ...
