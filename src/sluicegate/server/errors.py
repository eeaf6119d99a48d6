"""Errors as HTTP responses in OpenAI's shape, so every official SDK maps them to its exception classes."""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec
from aiohttp import web

from sluicegate.types import GatewayError

_encode = msgspec.json.Encoder()


def error_response(error: GatewayError, ids: Mapping[str, str]) -> web.Response:
    """`ids`: the id headers every response carries (x-request-id, and x-client-request-id when the client sent one)."""
    headers = {**error.headers, **ids}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    body = error.upstream_body if error.upstream_body is not None else _encode.encode(error.payload())
    return web.Response(status=error.status, body=body, content_type="application/json", headers=headers)
