"""`--format gemini` / `gemini-array`: Gemini's `models/{model}:streamGenerateContent` and `:generateContent`.

`gemini` streams SSE (`alt=sse`, CRLF-framed as Google sends it); `gemini-array` streams the JSON-array form (what
Gemini sends without `alt=sse`), whatever the query says. Chunk shapes follow the google-genai SDK's
GenerateContentResponse; the tests parse this mock's output with that SDK's types. The model comes from the path.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from sluicegate.mock.formats.base import SLOT, RequestInfo, StreamEncoder, StreamFormat, new_id, template
from sluicegate.mock.formats.splice import TokenEvents, prompt_tokens
from sluicegate.mock.tokens import TokenSource

_encode = msgspec.json.encode
_PATH: Final = re.compile(r"/(?:v1|v1beta|v1alpha)/models/([^/:]+):(streamGenerateContent|generateContent)")
FINISH_REASONS: Final = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY", "tool_calls": "STOP"}
MOCK_STREAM_ERROR: Final = {"code": 503, "message": "mock upstream error", "status": "UNAVAILABLE"}
_STATUS_NAMES: Final = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                        429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _status_name(status: int) -> str:
    return _STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


class _Framing:
    """SSE events, or elements of one JSON array (opened by the first element, closed by the end)."""

    def __init__(self, array: bool) -> None:
        self.array = array
        self._opened = False

    def event(self, payload: bytes) -> bytes:
        if not self.array:
            return b"data: " + payload + b"\r\n\r\n"
        if self._opened:
            return b"," + payload
        self._opened = True
        return b"[" + payload

    def opened_by_tokens(self) -> None:
        """The first token event, pre-built with its ',' swapped for '[', opened the array."""
        self._opened = True

    def close(self) -> bytes:
        if not self.array:
            return b""
        return b"]" if self._opened else b"[]"


class _GenerateEncoder:
    def __init__(self, info: RequestInfo, source: TokenSource, array: bool) -> None:
        self._info = info
        self._source = source
        self._framing = _Framing(array)
        self._id = new_id("")[:22]
        before, after = template(self._chunk({"text": SLOT}, None, None))
        separator = b"\r\n\r\n" if not array else b""
        prefix = b"data: " if not array else b","
        self._tokens = TokenEvents(source, lambda piece: prefix + before + piece + after + separator)

    def _usage(self, sent: int | None) -> dict[str, Any]:
        prompt = self._info.prompt_tokens
        usage: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt + (sent or 0)}
        if sent is not None:
            usage["candidatesTokenCount"] = sent
        return usage

    def _chunk(self, part: dict[str, Any], finish: str | None, sent: int | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "usageMetadata": self._usage(sent), "modelVersion": self._info.model,
                "responseId": self._id}

    def head(self) -> bytes:
        return b""

    def tokens(self, start: int, stop: int) -> bytes:
        data = self._tokens.join(start, stop)
        if self._framing.array and start == 0:
            self._framing.opened_by_tokens()
            return b"[" + data[1:]
        return data

    def end(self, sent: int, finish_reason: str) -> bytes:
        final = self._chunk({"text": ""}, FINISH_REASONS.get(finish_reason, "STOP"), sent)
        return self._framing.event(_encode(final)) + self._framing.close()

    def error_event(self) -> bytes:
        return self._framing.event(_encode({"error": MOCK_STREAM_ERROR})) + self._framing.close()

    def body(self, sent: int, finish_reason: str) -> bytes:
        return _encode(self._chunk({"text": self._source.text(sent)}, FINISH_REASONS.get(finish_reason, "STOP"),
                                   sent))


class GenerateContent:
    def __init__(self, model: str, stream: bool, array: bool) -> None:
        self._model = model
        self._stream = stream
        self._array = array
        self.stream_content_type = "application/json" if array else "text/event-stream"

    def describe(self, body: Mapping[str, Any]) -> RequestInfo:
        return RequestInfo(model=self._model, stream=self._stream, include_usage=True,
                           prompt_tokens=prompt_tokens(body.get("contents"), body.get("systemInstruction")))

    def open(self, info: RequestInfo, source: TokenSource, usage: bool) -> StreamEncoder:
        return _GenerateEncoder(info, source, self._array)


class GeminiApi:
    """`--format gemini` (SSE) and `--format gemini-array` (streamed JSON array)."""

    def __init__(self, array: bool = False) -> None:
        self._array = array
        self.name = "gemini-array" if array else "gemini"

    def stream_format(self, path: str) -> StreamFormat | None:
        match = _PATH.search(path)
        if match is None:
            return None
        model = urllib.parse.unquote(match.group(1))
        return GenerateContent(model, match.group(2) == "streamGenerateContent", self._array)

    def static_body(self, path: str) -> bytes | None:
        return None

    def error_body(self, status: int, message: str, *, param: str | None, code: str | None) -> bytes:
        error = _encode({"error": {"code": status, "message": message, "status": _status_name(status)}})
        return b"[" + error + b"]" if self._array else error

    def stream_error_body(self) -> bytes:
        return _encode({"error": {**MOCK_STREAM_ERROR, "code": 500, "status": "INTERNAL"}})


def gemini_array_api() -> GeminiApi:
    return GeminiApi(array=True)
