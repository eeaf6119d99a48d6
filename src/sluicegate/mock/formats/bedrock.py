"""`--format bedrock`: Bedrock's `POST /model/{modelId}/converse-stream` (AWS event stream) and `/converse`.

Frames carry the headers Bedrock sends (`:event-type`, `:content-type`, `:message-type`); the tests parse them with
botocore's own event-stream parser and ConverseStream model. The mock does not check SigV4 signatures (tests read
the Authorization header from the tagged request record). A mid-stream fault is a `serviceUnavailableException`.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from sluicegate.mock.formats.base import SLOT, RequestInfo, StreamEncoder, StreamFormat, template
from sluicegate.mock.formats.splice import TokenEvents, prompt_tokens
from sluicegate.mock.tokens import TokenSource
from sluicegate.wire.aws_eventstream import encode_message

EVENT_STREAM_CONTENT_TYPE: Final = "application/vnd.amazon.eventstream"
_encode = msgspec.json.encode
_PATH: Final = re.compile(r"/model/([^/]+)/(converse-stream|converse)$")
STOP_REASONS: Final = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                       "content_filter": "content_filtered"}
MOCK_EXCEPTION: Final = "serviceUnavailableException"


def event_frame(event_type: str, payload: bytes) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, payload)


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {":exception-type": exception_type, ":content-type": "application/json",
               ":message-type": "exception"}
    return encode_message(headers, _encode({"message": message}))


class _ConverseEncoder:
    def __init__(self, info: RequestInfo, source: TokenSource) -> None:
        self._info = info
        self._source = source
        before, after = template({"contentBlockIndex": 0, "delta": {"text": SLOT}})
        self._tokens = TokenEvents(source, lambda piece: event_frame("contentBlockDelta", before + piece + after))

    def _usage(self, sent: int) -> dict[str, int]:
        prompt = self._info.prompt_tokens
        return {"inputTokens": prompt, "outputTokens": sent, "totalTokens": prompt + sent}

    def head(self) -> bytes:
        return event_frame("messageStart", b'{"role":"assistant"}')

    def tokens(self, start: int, stop: int) -> bytes:
        return self._tokens.join(start, stop)

    def end(self, sent: int, finish_reason: str) -> bytes:
        stop = {"stopReason": STOP_REASONS.get(finish_reason, "end_turn")}
        metadata = {"usage": self._usage(sent), "metrics": {"latencyMs": 1}}
        return b"".join((
            event_frame("contentBlockStop", b'{"contentBlockIndex":0}'),
            event_frame("messageStop", _encode(stop)),
            event_frame("metadata", _encode(metadata)),
        ))

    def error_event(self) -> bytes:
        return exception_frame(MOCK_EXCEPTION, "mock upstream error")

    def body(self, sent: int, finish_reason: str) -> bytes:
        message = {"role": "assistant", "content": [{"text": self._source.text(sent)}]}
        return _encode({
            "output": {"message": message}, "stopReason": STOP_REASONS.get(finish_reason, "end_turn"),
            "usage": self._usage(sent), "metrics": {"latencyMs": 1},
        })


class Converse:
    def __init__(self, model: str, stream: bool) -> None:
        self._model = model
        self._stream = stream
        self.stream_content_type = EVENT_STREAM_CONTENT_TYPE

    def describe(self, body: Mapping[str, Any]) -> RequestInfo:
        return RequestInfo(model=self._model, stream=self._stream, include_usage=True,
                           prompt_tokens=prompt_tokens(body.get("messages"), body.get("system")))

    def open(self, info: RequestInfo, source: TokenSource, usage: bool) -> StreamEncoder:
        return _ConverseEncoder(info, source)


class BedrockApi:
    """`--format bedrock`: POST .../model/{modelId}/converse-stream and .../converse."""

    name = "bedrock"

    def stream_format(self, path: str) -> StreamFormat | None:
        match = _PATH.search(path)
        if match is None:
            return None
        return Converse(urllib.parse.unquote(match.group(1)), match.group(2) == "converse-stream")

    def static_body(self, path: str) -> bytes | None:
        return None

    def error_body(self, status: int, message: str, *, param: str | None, code: str | None) -> bytes:
        return _encode({"message": message})

    def stream_error_body(self) -> bytes:
        return _encode({"message": "mock upstream error"})
