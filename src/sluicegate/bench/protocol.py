"""What the bench sends to each OpenAI route and how it reads the events that come back.

Each event is classified into one signal: content-bearing, end of stream, error, undecodable, or nothing of
interest. JSON is decoded with msgspec into small structs that name only the fields we look at, so unknown
fields are skipped in C rather than built into Python objects.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

IGNORE = 0
CONTENT = 1
END = 2
ERROR = 3
BAD_EVENT = 4


class Endpoint(StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"
    RESPONSES = "responses"

    @property
    def path(self) -> str:
        return _PATHS[self]


_PATHS = {
    Endpoint.CHAT: "/chat/completions",
    Endpoint.COMPLETIONS: "/completions",
    Endpoint.RESPONSES: "/responses",
}


def build_body(
    endpoint: Endpoint,
    model: str,
    prompt: str,
    max_tokens: int | None,
    include_usage: bool,
    extra: dict[str, Any],
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "stream": True}
    if endpoint is Endpoint.CHAT:
        body["messages"] = [{"role": "user", "content": prompt}]
    elif endpoint is Endpoint.COMPLETIONS:
        body["prompt"] = prompt
    else:
        body["input"] = prompt
    if max_tokens is not None:
        body["max_output_tokens" if endpoint is Endpoint.RESPONSES else "max_tokens"] = max_tokens
    # The Responses API always reports usage in response.completed; the other two need asking.
    if include_usage and endpoint is not Endpoint.RESPONSES:
        body["stream_options"] = {"include_usage": True}
    return deep_merge(body, extra)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` wins; nested objects are merged key by key rather than replaced."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


class _Usage(msgspec.Struct):
    completion_tokens: int | None = None
    output_tokens: int | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[object] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _ChoicesChunk(msgspec.Struct):
    """Chat and legacy completions chunks: chat has choices[].delta, completions choices[].text."""

    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: object = None


class _ResponseBody(msgspec.Struct):
    usage: _Usage | None = None


class _ResponsesEvent(msgspec.Struct):
    type: str = ""
    delta: str | None = None
    response: _ResponseBody | None = None
    error: object = None


_CHOICES_DECODER = msgspec.json.Decoder(_ChoicesChunk)
_RESPONSES_DECODER = msgspec.json.Decoder(_ResponsesEvent)

_RESPONSES_CONTENT = frozenset({"response.output_text.delta", "response.function_call_arguments.delta"})
# response.incomplete is a normal end too (e.g. max_output_tokens reached), like finish_reason "length".
_RESPONSES_END = frozenset({"response.completed", "response.incomplete"})
_RESPONSES_ERROR = frozenset({"error", "response.failed"})


class EventReader:
    """Classifies the events of one stream; remembers the usage token count if one was reported."""

    __slots__ = ("usage_tokens",)

    def __init__(self) -> None:
        self.usage_tokens: int | None = None

    def classify(self, name: bytes, data: bytes) -> int:
        raise NotImplementedError


class ChoicesReader(EventReader):
    """Chat completions and legacy completions: content in choices, ends with `data: [DONE]`."""

    __slots__ = ()

    def classify(self, name: bytes, data: bytes) -> int:
        if name == b"error":
            return ERROR
        if data.startswith(b"[DONE]"):
            return END
        try:
            chunk = _CHOICES_DECODER.decode(data)
        except msgspec.DecodeError:
            return BAD_EVENT
        if chunk.error is not None:
            return ERROR
        usage = chunk.usage
        if usage is not None and usage.completion_tokens is not None:
            self.usage_tokens = usage.completion_tokens
        choices = chunk.choices
        if choices:
            choice = choices[0]
            delta = choice.delta
            if delta is not None and (delta.content or delta.tool_calls):
                return CONTENT
            if choice.text:
                return CONTENT
        return IGNORE


class ResponsesReader(EventReader):
    """Responses API: typed events, content in output_text deltas, ends with response.completed."""

    __slots__ = ()

    def classify(self, name: bytes, data: bytes) -> int:
        try:
            event = _RESPONSES_DECODER.decode(data)
        except msgspec.DecodeError:
            return BAD_EVENT
        kind = event.type or name.decode("utf-8", "replace")
        if kind in _RESPONSES_CONTENT:
            return CONTENT if event.delta else IGNORE
        if kind in _RESPONSES_END:
            body = event.response
            if body is not None and body.usage is not None:
                self.usage_tokens = body.usage.output_tokens
            return END
        if kind in _RESPONSES_ERROR or event.error is not None:
            return ERROR
        return IGNORE


def reader_for(endpoint: Endpoint) -> type[EventReader]:
    return ResponsesReader if endpoint is Endpoint.RESPONSES else ChoicesReader
