"""Cheap request validation: only what routing and accounting need (model, stream, usage flag, size)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from sluicegate.ids import new_id
from sluicegate.types import Endpoint, GatewayError, GatewayRequest, Outcome

_decode = msgspec.json.Decoder()
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id() -> str:
    """The gateway's own id for a request: unique, the key of its usage record, returned as x-request-id."""
    return new_id()


def id_headers(request_headers: Mapping[str, str]) -> dict[str, str]:
    """x-request-id (always ours) and x-client-request-id (the client's, echoed) for the response."""
    ids = {"x-request-id": request_id()}
    client_id = client_request_id(request_headers)
    if client_id is not None:
        ids["x-client-request-id"] = client_id
    return ids


def client_request_id(headers: Mapping[str, str]) -> str | None:
    """The client's own id (x-client-request-id, as OpenAI's SDKs send it, or x-request-id) when it is safe to echo
    and log. It is recorded and echoed back as x-client-request-id, never used as a key."""
    for name in ("x-client-request-id", "x-request-id"):
        value = headers.get(name)
        if value and _REQUEST_ID.fullmatch(value):
            return value
    return None


def _bad(message: str, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, type="invalid_request_error", code=code, param=param, outcome=Outcome.INVALID)


def parse_request(raw: bytes, endpoint: Endpoint, rid: str, arrived: float) -> GatewayRequest:
    if not raw.strip():
        raise _bad("The request body is empty; send a JSON object with at least a 'model' field.")
    try:
        body: Any = _decode.decode(raw)
    except msgspec.DecodeError as exc:
        raise _bad(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad(f"The request body must be a JSON object, not a {type(body).__name__}.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("The 'model' field is required and must be a non-empty string.", param="model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad(f"The 'stream' field must be true or false, not {stream!r}.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("The 'stream_options' field must be an object.", param="stream_options")
    wants_usage = endpoint is Endpoint.RESPONSES or bool(options and options.get("include_usage") is True)
    user = body.get("user")
    return GatewayRequest(
        id=rid, endpoint=endpoint, body=body, model=model, stream=stream, client_wants_usage=wants_usage,
        arrived=arrived, arrived_wall=time.time(), user=user if isinstance(user, str) else None, holder=rid,
    )
