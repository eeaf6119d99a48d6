"""`--format ollama`: Ollama's native `POST /api/chat`, streamed as NDJSON (Ollama streams unless `stream` is false).

Line shapes follow Ollama's recorded output: one `{"model","created_at","message","done":false}` line per token and
a final `done: true` line with `done_reason` and the token counts. A mid-stream fault is an `{"error": ...}` line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from sluicegate.mock.formats.base import SLOT, RequestInfo, StreamEncoder, StreamFormat, template
from sluicegate.mock.formats.splice import TokenEvents, prompt_tokens
from sluicegate.mock.tokens import TokenSource

NDJSON_CONTENT_TYPE: Final = "application/x-ndjson"
DEFAULT_MODEL: Final = "mock-model"
DONE_REASONS: Final = {"length": "length"}
_encode = msgspec.json.encode


def _created_at() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class _ChatEncoder:
    def __init__(self, info: RequestInfo, source: TokenSource) -> None:
        self._info = info
        self._source = source
        self._created_at = _created_at()
        before, after = template(self._line(SLOT))
        self._tokens = TokenEvents(source, lambda piece: before + piece + after + b"\n")

    def _line(self, content: str) -> dict[str, Any]:
        return {"model": self._info.model, "created_at": self._created_at,
                "message": {"role": "assistant", "content": content}, "done": False}

    def _done(self, content: str, sent: int, finish_reason: str) -> bytes:
        line = {
            **self._line(content), "done_reason": DONE_REASONS.get(finish_reason, "stop"), "done": True,
            "total_duration": 1000, "load_duration": 10, "prompt_eval_count": self._info.prompt_tokens,
            "prompt_eval_duration": 100, "eval_count": sent, "eval_duration": 800,
        }
        return _encode(line)

    def head(self) -> bytes:
        return b""

    def tokens(self, start: int, stop: int) -> bytes:
        return self._tokens.join(start, stop)

    def end(self, sent: int, finish_reason: str) -> bytes:
        return self._done("", sent, finish_reason) + b"\n"

    def error_event(self) -> bytes:
        return b'{"error":"mock upstream error"}\n'

    def body(self, sent: int, finish_reason: str) -> bytes:
        return self._done(self._source.text(sent), sent, finish_reason)


class Chat:
    stream_content_type = NDJSON_CONTENT_TYPE

    def describe(self, body: Mapping[str, Any]) -> RequestInfo:
        model = body.get("model")
        return RequestInfo(
            model=model if isinstance(model, str) and model else DEFAULT_MODEL,
            stream=body.get("stream") is not False,
            include_usage=True,
            prompt_tokens=prompt_tokens(body.get("messages")),
        )

    def open(self, info: RequestInfo, source: TokenSource, usage: bool) -> StreamEncoder:
        return _ChatEncoder(info, source)


class OllamaApi:
    """`--format ollama`: POST /api/chat."""

    name = "ollama"

    def __init__(self) -> None:
        self._chat = Chat()

    def stream_format(self, path: str) -> StreamFormat | None:
        return self._chat if path.endswith("/api/chat") else None

    def static_body(self, path: str) -> bytes | None:
        return None

    def error_body(self, status: int, message: str, *, param: str | None, code: str | None) -> bytes:
        return _encode({"error": message})

    def stream_error_body(self) -> bytes:
        return b'{"error":"mock upstream error"}'
