"""OpenAI chat-completion shapes built by the translating adapters: streamed `chat.completion.chunk` events and the
non-streaming `chat.completion` body.

Per event only the varying part is encoded: the id/object/created/model head of every chunk is encoded once per
stream, so a text delta costs one JSON string encode and one join.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from sluicegate.providers.base import Usage
from sluicegate.wire.sse import DONE_EVENT

_encode: Final = msgspec.json.Encoder().encode
_CHOICE_TAIL: Final = b',"logprobs":null,"finish_reason":null}]}\n\n'


def _str(value: str) -> bytes:
    return _encode(value)


@dataclass(slots=True)
class UsageCounts:
    """Usage as the translators collect it; `reasoning`/`cached` fill the OpenAI `*_details` objects."""

    prompt: int | None = None
    completion: int | None = None
    reasoning: int | None = None
    cached: int | None = None

    def as_usage(self) -> Usage:
        return Usage(self.prompt, self.completion)

    def as_openai(self) -> dict[str, Any]:
        prompt = self.prompt or 0
        completion = self.completion or 0
        usage: dict[str, Any] = {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        }
        if self.cached is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached}
        if self.reasoning is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning}
        return usage


class ChunkEncoder:
    """The SSE bytes of one stream's chunks; id, created and model are fixed at construction."""

    __slots__ = ("_delta", "_head")

    def __init__(self, chunk_id: str, created: int, model: str) -> None:
        self._head = b'data: {"id":%b,"object":"chat.completion.chunk","created":%d,"model":%b' % (
            _str(chunk_id), created, _str(model))
        self._delta = self._head + b',"choices":[{"index":0,"delta":'

    def role(self) -> bytes:
        return self._delta + b'{"role":"assistant","content":""}' + _CHOICE_TAIL

    def content(self, text: str) -> bytes:
        return b"".join((self._delta, b'{"content":', _encode(text), b"}", _CHOICE_TAIL))

    def reasoning(self, text: str) -> bytes:
        """Thinking text as `delta.reasoning_content`, the field vLLM/DeepSeek-style clients read."""
        return b"".join((self._delta, b'{"reasoning_content":', _encode(text), b"}", _CHOICE_TAIL))

    def tool_call(self, index: int, call_id: str, name: str, arguments: str = "",
                  extra: dict[str, Any] | None = None) -> bytes:
        """The first delta of tool call `index`: its id, type and name (and arguments when they come whole)."""
        call: dict[str, Any] = {
            "index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments},
        }
        if extra:
            call.update(extra)
        return b"".join((self._delta, b'{"tool_calls":[', _encode(call), b"]}", _CHOICE_TAIL))

    def tool_arguments(self, index: int, fragment: str) -> bytes:
        return b"".join((self._delta, b'{"tool_calls":[{"index":%d,"function":{"arguments":' % index,
                         _encode(fragment), b"}}]}", _CHOICE_TAIL))

    def finish(self, reason: str) -> bytes:
        return b"".join((self._delta, b'{},"logprobs":null,"finish_reason":', _encode(reason), b"}]}\n\n"))

    def usage(self, usage: UsageCounts) -> bytes:
        """The include_usage chunk: no choices, the usage object."""
        return b"".join((self._head, b',"choices":[],"usage":', _encode(usage.as_openai()), b"}\n\n"))


def error_event(message: str, code: str | None, error_type: str | None = None) -> bytes:
    """One OpenAI-style error event; the SDK raises on a data object with an `error` key."""
    error = {"message": message, "type": error_type or "upstream_error", "param": None, "code": code}
    return b"data: " + _encode({"error": error}) + b"\n\n"


@dataclass(slots=True)
class ToolCallOut:
    call_id: str
    name: str
    arguments: str
    extra: dict[str, Any] = field(default_factory=dict)


def completion_body(
    completion_id: str, created: int, model: str, *, content: str | None, reasoning: str | None,
    tool_calls: list[ToolCallOut], finish_reason: str | None, usage: UsageCounts | None,
) -> bytes:
    """A non-streaming `chat.completion` response body."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = [
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}, **c.extra}
            for c in tool_calls
        ]
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage.as_openai()
    return _encode(body)


DONE: Final = DONE_EVENT
