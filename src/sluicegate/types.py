"""The shared vocabulary of every layer: the request as the gateway sees it, stream outcomes, and the error a
client receives. It sits below `providers` so that adapters and the gateway can both speak it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sluicegate.ids import new_id


class Endpoint(StrEnum):
    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    RESPONSES = "responses"


class Outcome(StrEnum):
    """How a request ended; exactly one per request (sluicegate_streams_total{outcome})."""

    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT_CONNECT = "timeout_connect"
    TIMEOUT_FIRST_CHUNK = "timeout_first_chunk"
    TIMEOUT_IDLE = "timeout_idle"
    TIMEOUT_TOTAL = "timeout_total"
    TIMEOUT_REQUEST = "timeout_request"
    WRITE_STALL = "write_stall"
    SHED = "shed"
    SHUTDOWN = "shutdown"  # still running when the drain's grace period (server.shutdown_grace) ended
    REJECTED = "rejected"  # admission said no (cap, rate, auth) before any upstream work
    INVALID = "invalid"  # the request itself was wrong (400/404/413)


@dataclass(slots=True)
class GatewayRequest:
    """A validated client request. `body` is the client's JSON object; only `model` (and, for usage accounting,
    `stream_options.include_usage`) is changed before it goes upstream."""

    id: str
    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    client_wants_usage: bool
    arrived: float  # time.monotonic()
    arrived_wall: float  # unix time
    key_name: str | None = None
    client_request_id: str | None = None  # the client's own id for this request, echoed back, never a key
    user: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    first_sent: float = 0.0  # time.monotonic() the first upstream attempt was sent (gateway overhead = this - arrived)
    # Who holds this request's admission slots: always generated here (the server path passes the request's own
    # id, which is the gateway's too), never the client's id, so that a client reusing one id cannot share one
    # slot between many requests.
    holder: str = field(default_factory=new_id)


class GatewayError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

    `outcome` is how the request is accounted; `retry_after` (seconds) becomes a Retry-After header.
    `upstream_body` passes an upstream's own error body through unchanged (its 4xx answers).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        outcome: Outcome = Outcome.UPSTREAM_ERROR,
        retry_after: float | None = None,
        upstream_body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.outcome = outcome
        self.retry_after = retry_after
        self.upstream_body = upstream_body
        self.headers: dict[str, str] = {}  # extra response headers (which deployment, how many attempts)

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
