"""The pass-through codec's few decisions (first-event error, usage, finish reason, stripping the usage chunk the
gateway asked for) come out the same whether an event has the common shape (`data: ` + LF, sliced directly) or
any other shape the SSE spec allows (decoded by the WHATWG decoder), and for any split of the input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.providers.openai import OpenAIPassthroughCodec
from sluicegate.types import Endpoint

FIXTURES = Path(__file__).parent / "fixtures" / "openai-chat"
ERROR = b'{"error":{"message":"model overloaded","type":"server_error","code":"overloaded"}}'
USAGE = b'{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}'
FINISH = b'{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":null}'
CONTENT = b'{"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}'


def event(data: bytes, shape: str) -> bytes:
    return {
        "plain": b"data: " + data + b"\n\n",
        "no-space": b"data:" + data + b"\n\n",
        "crlf": b"data: " + data + b"\r\n\r\n",
        "two-lines": b"event: message\ndata: " + data + b"\n\n",
    }[shape]


SHAPES = ["plain", "no-space", "crlf", "two-lines"]


def codec(strip_usage: bool = True) -> OpenAIPassthroughCodec:
    return OpenAIPassthroughCodec(Endpoint.CHAT, strip_usage=strip_usage, max_event_bytes=1 << 20)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("preamble", [b"", b": keep-alive\n\n"])
def test_first_event_error_in_every_shape(shape: str, preamble: bytes) -> None:
    c = codec()
    out = c.feed(preamble) + c.feed(event(ERROR, shape))
    assert out == b"" and c.started
    assert c.first_error is not None and c.first_error.code == "overloaded"


@pytest.mark.parametrize("shape", SHAPES)
def test_usage_finish_reason_and_stripping_in_every_shape(shape: str) -> None:
    stream = event(CONTENT, shape) + event(FINISH, shape) + event(USAGE, shape) + event(b"[DONE]", shape)
    stripped = codec(strip_usage=True)
    out = stripped.feed(stream) + stripped.finish()
    assert out == event(CONTENT, shape) + event(FINISH, shape) + event(b"[DONE]", shape)
    assert stripped.finish_reason == "length" and stripped.error is None and stripped.first_error is None
    assert stripped.usage is not None and (stripped.usage.prompt_tokens, stripped.usage.completion_tokens) == (3, 5)
    kept = codec(strip_usage=False)
    assert kept.feed(stream) + kept.finish() == stream


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_recorded_streams_pass_through_unchanged_for_any_split(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(FIXTURES.glob("*.sse"))))
    body = path.read_bytes()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    c = codec(strip_usage=False)
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert b"".join(c.feed(p) for p in pieces) + c.finish() == body
    whole = codec(strip_usage=False)
    whole.feed(body)
    whole.finish()
    assert (c.usage, c.finish_reason, c.error) == (whole.usage, whole.finish_reason, whole.error)
