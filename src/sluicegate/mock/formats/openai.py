"""OpenAI wire shapes (as OpenAI and vLLM send them): chat completions, completions and the Responses API."""

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
    rough_token_count,
    sse_data,
    sse_event,
    template,
    template3,
)
from sluicegate.mock.tokens import TokenSource

_encode = msgspec.json.encode

MOCK_ERROR: Final[dict[str, Any]] = {
    "message": "mock upstream error",
    "type": "server_error",
    "param": None,
    "code": "mock_error",
}
DONE_EVENT: Final = b"data: [DONE]\n\n"
DEFAULT_MODEL: Final = "mock-model"


def _text_length(node: object) -> int:
    """Characters of prompt text in a messages/prompt/input value (strings under content/text keys)."""
    if isinstance(node, str):
        return len(node)
    if isinstance(node, int) and not isinstance(node, bool):
        return 4  # a token id
    if isinstance(node, list):
        return sum(_text_length(item) for item in node)
    if isinstance(node, dict):
        return _text_length(node.get("content")) + _text_length(node.get("text"))
    return 0


def _describe(body: Mapping[str, Any], *prompt_keys: str) -> RequestInfo:
    model = body.get("model")
    options = body.get("stream_options")
    return RequestInfo(
        model=model if isinstance(model, str) and model else DEFAULT_MODEL,
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        prompt_tokens=rough_token_count(sum(_text_length(body.get(key)) for key in prompt_keys)),
    )


def _usage(info: RequestInfo, sent: int) -> dict[str, int]:
    return {
        "prompt_tokens": info.prompt_tokens,
        "completion_tokens": sent,
        "total_tokens": info.prompt_tokens + sent,
    }


def _splice(before: bytes, after: bytes, source: TokenSource) -> tuple[list[bytes], bytes]:
    """Whole token events for each cycle position and for the last token."""
    return [before + piece + after for piece in source.cycle_json], before + source.last_json + after


def _join_tokens(events: list[bytes], last: bytes, source: TokenSource, start: int, stop: int) -> bytes:
    period = source.period
    if stop < source.count:
        if stop - start == 1:  # the common paced case
            return events[start % period]
        return b"".join([events[i % period] for i in range(start, stop)])
    return b"".join([events[i % period] for i in range(start, stop - 1)]) + last


class _ChoiceStreamEncoder:
    """Chat and text completions: `data:` chunks with one choice, an optional usage chunk, then [DONE]."""

    def __init__(self, info: RequestInfo, source: TokenSource, usage: bool, *, chat: bool) -> None:
        self._info = info
        self._source = source
        self._usage = usage
        self._chat = chat
        self._base: dict[str, Any] = {
            "id": new_id("chatcmpl-" if chat else "cmpl-"),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": info.model,
            "system_fingerprint": None,
        }
        before, after = template(self._chunk(self._choice(SLOT, None)))
        self._events, self._last = _splice(b"data: " + before, after + b"\n\n", source)

    def _choice(self, content: str | None, finish_reason: str | None, *, role: bool = False) -> dict[str, Any]:
        if not self._chat:
            return {"text": content or "", "index": 0, "logprobs": None, "finish_reason": finish_reason}
        delta: dict[str, str] = {}
        if role:
            delta["role"] = "assistant"
        if content is not None:
            delta["content"] = content
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        chunk = {**self._base, "choices": [choice]}
        if self._usage:
            chunk["usage"] = None
        return chunk

    def head(self) -> bytes:
        if not self._chat:
            return b""
        return sse_data(_encode(self._chunk(self._choice("", None, role=True))))

    def tokens(self, start: int, stop: int) -> bytes:
        return _join_tokens(self._events, self._last, self._source, start, stop)

    def end(self, sent: int, finish_reason: str) -> bytes:
        final = sse_data(_encode(self._chunk(self._choice(None, finish_reason))))
        if self._usage:
            final += sse_data(_encode({**self._base, "choices": [], "usage": _usage(self._info, sent)}))
        return final + DONE_EVENT

    def error_event(self) -> bytes:
        return sse_data(_encode({"error": MOCK_ERROR}))

    def body(self, sent: int, finish_reason: str) -> bytes:
        text = self._source.text(sent)
        choice: dict[str, Any]
        if self._chat:
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion" if self._chat else "text_completion"
        return _encode({**self._base, "object": obj, "choices": [choice], "usage": _usage(self._info, sent)})


class ChatCompletions:
    stream_content_type = SSE_CONTENT_TYPE

    def describe(self, body: Mapping[str, Any]) -> RequestInfo:
        return _describe(body, "messages")

    def open(self, info: RequestInfo, source: TokenSource, usage: bool) -> StreamEncoder:
        return _ChoiceStreamEncoder(info, source, usage, chat=True)


class Completions:
    stream_content_type = SSE_CONTENT_TYPE

    def describe(self, body: Mapping[str, Any]) -> RequestInfo:
        return _describe(body, "prompt")

    def open(self, info: RequestInfo, source: TokenSource, usage: bool) -> StreamEncoder:
        return _ChoiceStreamEncoder(info, source, usage, chat=False)


# finish_reason -> (response status, incomplete_details.reason)
_RESPONSE_ENDINGS: Final[dict[str, tuple[str, str | None]]] = {
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}


class _ResponsesEncoder:
    """Responses API: typed SSE events, each with `event:` and a `sequence_number`; no [DONE]."""

    def __init__(self, info: RequestInfo, source: TokenSource) -> None:
        self._info = info
        self._source = source
        self._id = new_id("resp_")
        self._item_id = new_id("msg_")
        self._created = int(time.time())
        self._seq = 0
        delta = {
            "type": "response.output_text.delta",
            "sequence_number": SLOT,
            "item_id": self._item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": SLOT,
            "logprobs": [],
        }
        before, middle, after = template3(delta)
        self._delta_head = b"event: response.output_text.delta\ndata: " + before
        self._delta_tails, self._last_tail = _splice(middle, after + b"\n\n", source)

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        payload = _encode({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1
        return sse_event(kind, payload)

    def _response(self, status: str, output: list[Any], usage: dict[str, Any] | None, reason: str | None) -> Any:
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": reason} if reason else None,
            "model": self._info.model,
            "output": output,
            "usage": usage,
        }

    def _usage(self, sent: int) -> dict[str, Any]:
        prompt = self._info.prompt_tokens
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": sent,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + sent,
        }

    def _item(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self._part(text)]
        return {
            "id": self._item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": []}

    def head(self) -> bytes:
        where = {"item_id": self._item_id, "output_index": 0, "content_index": 0}
        return b"".join(
            (
                self._event("response.created", {"response": self._response("in_progress", [], None, None)}),
                self._event("response.in_progress", {"response": self._response("in_progress", [], None, None)}),
                self._event("response.output_item.added", {"output_index": 0, "item": self._item("in_progress", None)}),
                self._event("response.content_part.added", {**where, "part": self._part("")}),
            )
        )

    def tokens(self, start: int, stop: int) -> bytes:
        head, tails, period, seq = self._delta_head, self._delta_tails, self._source.period, self._seq - start
        last_index = self._source.count - 1
        out = [head + b"%d" % (seq + i) + tails[i % period] for i in range(start, min(stop, last_index))]
        if stop > last_index:
            out.append(head + b"%d" % (seq + last_index) + self._last_tail)
        self._seq += stop - start
        return b"".join(out)

    def end(self, sent: int, finish_reason: str) -> bytes:
        text = self._source.text(sent)
        status, reason = _RESPONSE_ENDINGS.get(finish_reason, ("completed", None))
        where = {"item_id": self._item_id, "output_index": 0, "content_index": 0}
        final = self._response(status, [self._item("completed", text)], self._usage(sent), reason)
        return b"".join(
            (
                self._event("response.output_text.done", {**where, "text": text, "logprobs": []}),
                self._event("response.content_part.done", {**where, "part": self._part(text)}),
                self._event("response.output_item.done", {"output_index": 0, "item": self._item("completed", text)}),
                self._event(f"response.{status}", {"response": final}),
            )
        )

    def error_event(self) -> bytes:
        code, message = MOCK_ERROR["code"], MOCK_ERROR["message"]
        return self._event("error", {"code": code, "message": message, "param": None})

    def body(self, sent: int, finish_reason: str) -> bytes:
        status, reason = _RESPONSE_ENDINGS.get(finish_reason, ("completed", None))
        item = self._item("completed", self._source.text(sent))
        return _encode(self._response(status, [item], self._usage(sent), reason))


class Responses:
    stream_content_type = SSE_CONTENT_TYPE

    def describe(self, body: Mapping[str, Any]) -> RequestInfo:
        return _describe(body, "input", "instructions")

    def open(self, info: RequestInfo, source: TokenSource, usage: bool) -> StreamEncoder:
        return _ResponsesEncoder(info, source)  # usage always arrives in response.completed


# error type and code by status, as OpenAI's SDKs see them
def _error_kind(status: int) -> tuple[str, str | None]:
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status in (401, 403):
        return "invalid_request_error", "invalid_api_key" if status == 401 else None
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


_MODELS_BODY: Final = _encode(
    {
        "object": "list",
        "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "sluicegate-mock"}],
    }
)


class OpenAIApi:
    """`--format openai`: /v1/chat/completions, /v1/completions, /v1/responses, /v1/models."""

    name = "openai"

    def __init__(self) -> None:
        self._routes: dict[str, StreamFormat] = {
            "/v1/chat/completions": ChatCompletions(),
            "/v1/completions": Completions(),
            "/v1/responses": Responses(),
        }

    def stream_format(self, path: str) -> StreamFormat | None:
        return self._routes.get(path)

    def static_body(self, path: str) -> bytes | None:
        return _MODELS_BODY if path == "/v1/models" else None

    def error_body(self, status: int, message: str, *, param: str | None, code: str | None) -> bytes:
        kind, default_code = _error_kind(status)
        return _encode({"error": {"message": message, "type": kind, "param": param, "code": code or default_code}})

    def stream_error_body(self) -> bytes:
        return _encode({"error": MOCK_ERROR})
