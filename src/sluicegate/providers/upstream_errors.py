"""A translated provider's non-200 answer as the OpenAI-shaped error its client gets."""

from __future__ import annotations

from typing import Any

import msgspec

from sluicegate.types import GatewayError

_decode = msgspec.json.Decoder()


def json_or_none(body: bytes) -> Any:
    if not body:
        return None
    try:
        return _decode.decode(body)
    except msgspec.DecodeError:
        return None


def error_fields(obj: Any, code_key: str) -> tuple[str | None, str | None]:
    """(message, code) from a provider's `{"error": {"message": ..., code_key: ...}}` body; None where absent."""
    error = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(error, dict):
        return None, None
    message, code = error.get("message"), error.get(code_key)
    return (message if isinstance(message, str) else None), (code if isinstance(code, str) else None)


def openai_error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def provider_error(provider: str, upstream_status: int, client_status: int, message: str | None, code: str | None,
                   retry_after: float | None, body: bytes) -> GatewayError:
    """`message` None: the body was not in the provider's error shape, so a snippet of it is quoted."""
    if client_status < 400 or client_status > 599:
        client_status = 502
    if message is None:
        snippet = body[:200].decode("utf-8", "replace").strip() or "(empty body)"
        message = f"{provider} answered HTTP {upstream_status}: {snippet}"
    return GatewayError(client_status, message, type=openai_error_type(client_status),
                        code=code or f"upstream_http_{upstream_status}", retry_after=retry_after)


def malformed_response(provider: str, expected: str) -> GatewayError:
    """A complete (non-stream) upstream body that does not parse as the provider's response."""
    return GatewayError(502, f"The upstream ({provider}) sent a response that is not {expected}.",
                        type="upstream_error", code="upstream_malformed")
