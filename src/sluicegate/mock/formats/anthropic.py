"""`--format anthropic`: the Messages API (`POST /v1/messages`), streamed as Anthropic's named SSE events.

The event shapes follow the official SDK's types (RawMessageStartEvent, RawContentBlockDeltaEvent, ...); the tests
parse this mock's streams with the `anthropic` SDK itself so that a shape mistake cannot hide here and in the
adapter at once. A mid-stream fault is an `overloaded_error` event, the error Anthropic sends most.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from sluicegate.mock.formats.base import (
    SLOT,
    SSE_CONTENT_TYPE,
    RequestInfo,
    StreamEncoder,
    StreamFormat,
    new_id,
    sse_event,
    template,
)
from sluicegate.mock.formats.splice import TokenEvents, prompt_tokens
from sluicegate.mock.tokens import TokenSource

_encode = msgspec.json.encode
DEFAULT_MODEL: Final = "mock-model"
STOP_REASONS: Final = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                       "content_filter": "refusal"}
MOCK_STREAM_ERROR: Final = {"details": None, "type": "overloaded_error", "message": "mock upstream error"}
_ERROR_TYPES: Final = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                       404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                       500: "api_error", 504: "timeout_error", 529: "overloaded_error"}


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "output_tokens": output_tokens, "service_tier": "standard"}


class _MessagesEncoder:
    def __init__(self, info: RequestInfo, source: TokenSource) -> None:
        self._info = info
        self._source = source
        self._id = new_id("msg_")
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": SLOT}}
        before, after = template(delta)
        head = b"event: content_block_delta\ndata: " + before
        tail = after + b"\n\n"
        self._tokens = TokenEvents(source, lambda piece: head + piece + tail)

    def _message(self, content: list[Any], stop_reason: str | None, output_tokens: int) -> dict[str, Any]:
        return {
            "id": self._id, "type": "message", "role": "assistant", "model": self._info.model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": _usage(self._info.prompt_tokens, output_tokens),
        }

    def head(self) -> bytes:
        start = {"type": "message_start", "message": self._message([], None, 1)}
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return b"".join((
            sse_event("message_start", _encode(start)),
            sse_event("content_block_start", _encode(block)),
            sse_event("ping", b'{"type": "ping"}'),
        ))

    def tokens(self, start: int, stop: int) -> bytes:
        return self._tokens.join(start, stop)

    def end(self, sent: int, finish_reason: str) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": STOP_REASONS.get(finish_reason, "end_turn"), "stop_sequence": None},
            "usage": {"output_tokens": sent},
        }
        return b"".join((
            sse_event("content_block_stop", _encode({"type": "content_block_stop", "index": 0})),
            sse_event("message_delta", _encode(delta)),
            sse_event("message_stop", b'{"type":"message_stop"}'),
        ))

    def error_event(self) -> bytes:
        error = {"type": "error", "error": MOCK_STREAM_ERROR, "request_id": new_id("req_")}
        return sse_event("error", _encode(error))

    def body(self, sent: int, finish_reason: str) -> bytes:
        content = [{"type": "text", "text": self._source.text(sent)}]
        return _encode(self._message(content, STOP_REASONS.get(finish_reason, "end_turn"), sent))


class Messages:
    stream_content_type = SSE_CONTENT_TYPE

    def describe(self, body: Mapping[str, Any]) -> RequestInfo:
        model = body.get("model")
        return RequestInfo(
            model=model if isinstance(model, str) and model else DEFAULT_MODEL,
            stream=body.get("stream") is True,
            include_usage=True,  # Anthropic always reports usage
            prompt_tokens=prompt_tokens(body.get("messages"), body.get("system")),
        )

    def open(self, info: RequestInfo, source: TokenSource, usage: bool) -> StreamEncoder:
        return _MessagesEncoder(info, source)


_MODELS_BODY: Final = _encode({
    "data": [{"type": "model", "id": DEFAULT_MODEL, "display_name": "Mock model",
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0))}],
    "has_more": False, "first_id": DEFAULT_MODEL, "last_id": DEFAULT_MODEL,
})


class AnthropicApi:
    """`--format anthropic`: POST /v1/messages, GET /v1/models."""

    name = "anthropic"

    def __init__(self) -> None:
        self._messages = Messages()

    def stream_format(self, path: str) -> StreamFormat | None:
        return self._messages if path == "/v1/messages" else None

    def static_body(self, path: str) -> bytes | None:
        return _MODELS_BODY if path == "/v1/models" else None

    def error_body(self, status: int, message: str, *, param: str | None, code: str | None) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return _encode({"type": "error", "error": {"type": kind, "message": message}, "request_id": new_id("req_")})

    def stream_error_body(self) -> bytes:
        return _encode({"type": "error", "error": {"type": "api_error", "message": "mock upstream error"},
                        "request_id": new_id("req_")})
