"""Translating stream codecs fed with recorded real provider streams (tests/fixtures), split at arbitrary points.

What the OpenAI side must say is derived here independently of the adapters: the provider events are parsed with
other parsers (the full WHATWG SSE decoder, botocore's event-stream parser, plain line splitting) and folded by
hand into text, reasoning, tool calls, usage and finish reason. The translated chunks must match that, and be
byte-identical however the input is cut.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate.mock.formats.bedrock import event_frame, exception_frame
from sluicegate.providers.anthropic import AnthropicCodec
from sluicegate.providers.bedrock import BedrockCodec
from sluicegate.providers.gemini import GeminiCodec
from sluicegate.providers.ollama import OllamaCodec
from sluicegate.providers.translating_codec import TranslatingCodec
from sluicegate.types import Endpoint, GatewayRequest
from sluicegate.wire.sse import SSEDecoder

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ANTHROPIC = sorted((FIXTURES / "anthropic").glob("*.sse"))
GEMINI_SSE = sorted((FIXTURES / "gemini" / "sse").glob("*.sse"))
GEMINI_ARRAY = [FIXTURES / "gemini" / "json-array" / "louter-gemini25-flash-complete.json"]
BEDROCK = [p for p in sorted((FIXTURES / "bedrock").glob("*.bin")) if ".read" not in p.name]
OLLAMA = sorted((FIXTURES / "ollama").glob("*.ndjson"))


def request(wants_usage: bool = True) -> GatewayRequest:
    return GatewayRequest(id="req1", endpoint=Endpoint.CHAT, body={}, model="public-name", stream=True,
                          client_wants_usage=wants_usage, arrived=0.0, arrived_wall=1_700_000_000.5)


def fixture_bytes(path: Path) -> bytes:
    return path.read_bytes()


def bedrock_tool_use() -> bytes:
    return b"".join((FIXTURES / "bedrock" / f"kong-converse-tool-use.read{i}.bin").read_bytes() for i in (1, 2, 3))


@dataclass
class Answer:
    """What an OpenAI client reassembles from a stream (or what the provider's events say it should)."""

    text: str = ""
    reasoning: str = ""
    tools: dict[int, dict[str, str]] = field(default_factory=dict)
    prompt: int | None = None
    completion: int | None = None
    finish: str | None = None


# --- the OpenAI side --------------------------------------------------------------------------------------------
def reassemble(out: bytes) -> tuple[Answer, list[dict[str, Any]], bool]:
    """(answer, every chunk's JSON, whether the stream ended with [DONE])."""
    answer = Answer()
    chunks: list[dict[str, Any]] = []
    events = SSEDecoder().feed(out)
    done = bool(events) and events[-1].data == "[DONE]"
    for event in events:
        if event.data == "[DONE]":
            continue
        chunk = json.loads(event.data)
        chunks.append(chunk)
        if chunk.get("usage"):
            answer.prompt = chunk["usage"]["prompt_tokens"]
            answer.completion = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices", []):
            delta = choice["delta"]
            answer.text += delta.get("content") or ""
            answer.reasoning += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                tool = answer.tools.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                tool["id"] += call.get("id") or ""
                tool["name"] += (call.get("function") or {}).get("name") or ""
                tool["arguments"] += (call.get("function") or {}).get("arguments") or ""
            if choice.get("finish_reason"):
                answer.finish = choice["finish_reason"]
    return answer, chunks, done


def translate(codec: TranslatingCodec, data: bytes, cuts: list[int]) -> bytes:
    out = []
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out.append(codec.feed(data[last:cut]))
        last = cut
    out.append(codec.finish())
    return b"".join(out)


# --- the provider side, folded independently -------------------------------------------------------------------
ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def expect_anthropic(data: bytes) -> Answer:
    answer = Answer()
    tool_of_block: dict[int, int] = {}
    # The SDK fixture omits the last blank line; the spec would drop that event, the codec accepts it.
    for event in SSEDecoder().feed(data + b"\n\n"):
        obj = json.loads(event.data)
        kind = obj["type"]
        if kind == "message_start":
            usage = obj["message"]["usage"]
            answer.prompt = usage["input_tokens"] + usage.get("cache_creation_input_tokens", 0) + usage.get(
                "cache_read_input_tokens", 0)
        elif kind == "content_block_start" and obj["content_block"]["type"] == "tool_use":
            tool_of_block[obj["index"]] = len(tool_of_block)
            block = obj["content_block"]
            answer.tools[tool_of_block[obj["index"]]] = {"id": block["id"], "name": block["name"], "arguments": ""}
        elif kind == "content_block_delta":
            delta = obj["delta"]
            if delta["type"] == "text_delta":
                answer.text += delta["text"]
            elif delta["type"] == "thinking_delta":
                answer.reasoning += delta["thinking"]
            elif delta["type"] == "input_json_delta" and obj["index"] in tool_of_block:
                answer.tools[tool_of_block[obj["index"]]]["arguments"] += delta["partial_json"]
        elif kind == "message_delta":
            answer.completion = obj["usage"]["output_tokens"]
            if obj["usage"].get("input_tokens") is not None:  # server tools: the final input count comes here
                answer.prompt = obj["usage"]["input_tokens"] + obj["usage"].get("cache_creation_input_tokens", 0) + (
                    obj["usage"].get("cache_read_input_tokens", 0))
            answer.finish = ANTHROPIC_FINISH[obj["delta"]["stop_reason"]]
    return answer


def _gemini_fold(objects: list[dict[str, Any]]) -> Answer:
    answer = Answer()
    for obj in objects:
        for candidate in obj.get("candidates", []):
            for part in candidate.get("content", {}).get("parts", []):
                if part.get("text"):
                    if part.get("thought"):
                        answer.reasoning += part["text"]
                    else:
                        answer.text += part["text"]
                elif "functionCall" in part:
                    call = part["functionCall"]
                    answer.tools[len(answer.tools)] = {"id": f"call_req1_{len(answer.tools)}", "name": call["name"],
                                                       "arguments": json.dumps(call.get("args", {}))}
            if candidate.get("finishReason"):
                answer.finish = "tool_calls" if answer.tools else {"STOP": "stop", "MAX_TOKENS": "length"}.get(
                    candidate["finishReason"], "content_filter")
        usage = obj.get("usageMetadata")
        if usage:
            answer.prompt = usage.get("promptTokenCount")
            answer.completion = usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
    return answer


def expect_gemini_sse(data: bytes) -> Answer:
    return _gemini_fold([json.loads(event.data) for event in SSEDecoder().feed(data)])


def expect_gemini_array(data: bytes) -> Answer:
    return _gemini_fold(json.loads(data))


BEDROCK_FINISH = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length"}


def expect_bedrock(data: bytes) -> Answer:
    answer = Answer()
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    tool_of_block: dict[int, int] = {}
    for message in buffer:
        kind = message.headers[":event-type"]
        obj = json.loads(message.payload)
        if kind == "contentBlockStart" and obj["start"].get("toolUse", {"type": "none"}).get("type", "tool_use") == (
                "tool_use"):
            use = obj["start"]["toolUse"]
            tool_of_block[obj["contentBlockIndex"]] = len(tool_of_block)
            answer.tools[len(answer.tools)] = {"id": use["toolUseId"], "name": use["name"], "arguments": ""}
        elif kind == "contentBlockDelta":
            delta = obj["delta"]
            answer.text += delta.get("text", "")
            answer.reasoning += delta.get("reasoningContent", {}).get("text", "")
            if "toolUse" in delta and obj["contentBlockIndex"] in tool_of_block:
                answer.tools[tool_of_block[obj["contentBlockIndex"]]]["arguments"] += delta["toolUse"]["input"]
        elif kind == "messageStop":
            answer.finish = BEDROCK_FINISH[obj["stopReason"]]
        elif kind == "metadata":
            answer.prompt = obj["usage"]["inputTokens"]
            answer.completion = obj["usage"]["outputTokens"]
    return answer


def expect_ollama(data: bytes) -> Answer:
    answer = Answer()
    for line in data.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        message = obj.get("message", {})
        answer.text += message.get("content", "")
        answer.reasoning += message.get("thinking", "")
        for call in message.get("tool_calls", []):
            answer.tools[len(answer.tools)] = {"id": f"call_req1_{len(answer.tools)}",
                                               "name": call["function"]["name"],
                                               "arguments": json.dumps(call["function"]["arguments"])}
        if obj.get("done"):
            answer.prompt, answer.completion = obj["prompt_eval_count"], obj["eval_count"]
            answer.finish = "tool_calls" if answer.tools else obj["done_reason"]
    return answer


def _same_arguments(got: str, expected: str) -> bool:
    """Whole arguments are compared as JSON values (spacing differs); streamed ones as text."""
    try:
        return bool(json.loads(got) == json.loads(expected))
    except json.JSONDecodeError:
        return got == expected


CASES = (
    [(p, AnthropicCodec, expect_anthropic) for p in ANTHROPIC]
    + [(p, GeminiCodec, expect_gemini_sse) for p in GEMINI_SSE]
    + [(p, GeminiCodec, expect_gemini_array) for p in GEMINI_ARRAY]
    + [(p, BedrockCodec, expect_bedrock) for p in BEDROCK]
    + [(p, OllamaCodec, expect_ollama) for p in OLLAMA]
)


IDS = [f"{c[0].parent.name}/{c[0].name}" for c in CASES]


@pytest.mark.parametrize(("path", "codec_type", "expect"), CASES, ids=IDS)
def test_recorded_stream_translates_to_what_the_provider_said(path: Path, codec_type: type[TranslatingCodec],
                                                              expect: Any) -> None:
    data = fixture_bytes(path)
    codec = codec_type(request(), 1 << 20)  # type: ignore[call-arg]
    out = translate(codec, data, [])
    got, chunks, done = reassemble(out)
    want = expect(data)
    assert done and codec.error is None
    assert got.text == want.text and got.reasoning == want.reasoning
    assert got.tools.keys() == want.tools.keys()
    for index, tool in got.tools.items():
        assert tool["name"] == want.tools[index]["name"] and tool["id"] == want.tools[index]["id"]
        assert _same_arguments(tool["arguments"], want.tools[index]["arguments"])
    assert (got.prompt, got.completion) == (want.prompt, want.completion)
    assert codec.usage is not None and (codec.usage.prompt_tokens, codec.usage.completion_tokens) == (
        want.prompt, want.completion)
    assert got.finish == want.finish == codec.finish_reason
    # The OpenAI stream's invariants: one id, the public model, the role first, usage last before [DONE].
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"public-name"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == want.prompt + want.completion
    assert all(c["created"] == 1_700_000_000 for c in chunks)


@pytest.mark.parametrize(("path", "codec_type"), [(c[0], c[1]) for c in CASES],
                         ids=[f"{c[0].parent.name}/{c[0].name}" for c in CASES])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_split_gives_the_same_chunks(path: Path, codec_type: type[TranslatingCodec], data: st.DataObject) -> None:
    body = fixture_bytes(path)
    whole = translate(codec_type(request(), 1 << 20), body, [])  # type: ignore[call-arg]
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    assert translate(codec_type(request(), 1 << 20), body, cuts) == whole  # type: ignore[call-arg]


def test_byte_at_a_time_equals_whole() -> None:
    for path, codec_type, _ in CASES[:: max(1, len(CASES) // 8)]:
        body = fixture_bytes(path)
        whole = translate(codec_type(request(), 1 << 20), body, [])  # type: ignore[call-arg]
        assert translate(codec_type(request(), 1 << 20), body, list(range(len(body)))) == whole  # type: ignore[call-arg]


def test_bedrock_tool_use_read_in_three_network_reads() -> None:
    reads = [(FIXTURES / "bedrock" / f"kong-converse-tool-use.read{i}.bin").read_bytes() for i in (1, 2, 3)]
    codec = BedrockCodec(request(), 1 << 20)
    out = b"".join(codec.feed(r) for r in reads) + codec.finish()
    got, _, done = reassemble(out)
    assert done and got.tools == {0: {"id": "tooluse_UxbKWVKgTqe8cKjPPzopiQ", "name": "add",
                                      "arguments": '{"a": 2, "b": 12}'}}
    assert got.finish == "tool_calls" and (got.prompt, got.completion) == (478, 44)


# --- usage only when asked --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "codec_type"), [(ANTHROPIC[0], AnthropicCodec), (GEMINI_SSE[0], GeminiCodec),
                                                  (BEDROCK[0], BedrockCodec), (OLLAMA[0], OllamaCodec)])
def test_usage_chunk_only_when_the_client_asked(path: Path, codec_type: type[TranslatingCodec]) -> None:
    codec = codec_type(request(wants_usage=False), 1 << 20)  # type: ignore[call-arg]
    _, chunks, done = reassemble(translate(codec, fixture_bytes(path), []))
    assert done and all(c["choices"] for c in chunks)
    assert codec.usage is not None and codec.usage.completion_tokens  # measured all the same


# --- errors -----------------------------------------------------------------------------------------------------
ANTHROPIC_OVERLOADED = (b'event: error\ndata: {"type":"error","error":{"details":null,"type":"overloaded_error",'
                        b'"message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}\n\n')
ANTHROPIC_START = (FIXTURES / "anthropic" / "sdk-python-tool-use.sse").read_bytes().split(b"event: ping")[0]


@pytest.mark.parametrize(("codec_type", "body", "status", "code"), [
    (AnthropicCodec, ANTHROPIC_OVERLOADED, 503, "overloaded_error"),
    (AnthropicCodec, b": keepalive\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n" + ANTHROPIC_START
     + b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}\n\n',
     429, "rate_limit_error"),
    (GeminiCodec, b'data: {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}'
     b"\r\n\r\n", 429, "RESOURCE_EXHAUSTED"),
    (GeminiCodec, b'[{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}]', 503,
     "UNAVAILABLE"),
    (BedrockCodec, event_frame("messageStart", b'{"role":"assistant"}')
     + exception_frame("throttlingException", "Too many tokens"), 429, "throttlingException"),
    (BedrockCodec, exception_frame("modelStreamErrorException", "boom"), 502, "modelStreamErrorException"),
    (OllamaCodec, b'{"error":"model requires more system memory"}\n', 502, "upstream_error_event"),
])
def test_first_event_error_fails_the_attempt(codec_type: type[TranslatingCodec], body: bytes, status: int,
                                             code: str) -> None:
    codec = codec_type(request(), 1 << 20)  # type: ignore[call-arg]
    out = b"".join(codec.feed(body[i : i + 7]) for i in range(0, len(body), 7))
    assert out == b"" and codec.started
    assert codec.first_error is not None and codec.first_error is codec.error
    assert (codec.first_error.status, codec.first_error.code) == (status, code)
    assert codec.feed(b"more") == b"" and codec.finish() == b""


@pytest.mark.parametrize(("codec_type", "body", "cut", "error"), [
    (AnthropicCodec, (FIXTURES / "anthropic" / "prism-basic-text.sse").read_bytes(), b"event: content_block_stop",
     ANTHROPIC_OVERLOADED),
    (GeminiCodec, (FIXTURES / "gemini" / "sse" / "louter-gemini25-flash-long-lf-only.sse").read_bytes()[:20000],
     None,
     b'data: {"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}}\r\n\r\n'),
    (BedrockCodec, (FIXTURES / "bedrock" / "kong-converse-text.bin").read_bytes()[:400], None,
     exception_frame("modelStreamErrorException", "The model stream failed")),
    (OllamaCodec, (FIXTURES / "ollama" / "prism-granite3-basic-text.ndjson").read_bytes(),
     b'{"model":"granite3-dense:8b","created_at":"2025-03-20T18:32:38.724076Z"',
     b'{"error":"an error was encountered while running the model"}\n'),
])
def test_mid_stream_error_becomes_one_error_event_and_no_done(codec_type: type[TranslatingCodec], body: bytes,
                                                              cut: bytes | None, error: bytes) -> None:
    if cut is not None:
        body = body[: body.index(cut)]
    elif codec_type is GeminiCodec:
        body = body[: body.rindex(b"\n\n") + 2]
    elif codec_type is BedrockCodec:
        buffer = EventStreamBuffer()
        full = (FIXTURES / "bedrock" / "kong-converse-text.bin").read_bytes()
        buffer.add_data(full)
        frames = [m for m in buffer]
        body = b"".join(event_frame(m.headers[":event-type"], m.payload) for m in frames[:4])
    codec = codec_type(request(), 1 << 20)  # type: ignore[call-arg]
    out = codec.feed(body) + codec.feed(error) + codec.feed(b"ignored after the error") + codec.finish()
    events = SSEDecoder().feed(out)
    assert events[-1].data != "[DONE]" and all(e.data != "[DONE]" for e in events)
    last = json.loads(events[-1].data)
    assert set(last) == {"error"} and last["error"]["message"]
    assert codec.error is not None and codec.first_error is None
    assert sum("error" in json.loads(e.data) for e in events) == 1
    got, _, _ = reassemble(out.replace(events[-1].data.encode(), b"{}"))
    assert got.text  # the content before the error reached the client


@pytest.mark.parametrize(("codec_type", "path", "keep"), [
    (AnthropicCodec, ANTHROPIC[0], 0.6), (GeminiCodec, GEMINI_SSE[0], 0.6), (BedrockCodec, BEDROCK[1], 0.6),
    (OllamaCodec, OLLAMA[0], 0.6),
    (GeminiCodec, FIXTURES / "gemini" / "json-array" / "kong-first-network-read.part", 1),
])
def test_stream_cut_before_the_provider_end_is_an_error_not_done(codec_type: type[TranslatingCodec], path: Path,
                                                                 keep: float) -> None:
    body = fixture_bytes(path)
    codec = codec_type(request(), 1 << 20)  # type: ignore[call-arg]
    out = codec.feed(body[: int(len(body) * keep)]) + codec.finish()
    events = SSEDecoder().feed(out)
    assert json.loads(events[-1].data)["error"]["code"] == "upstream_truncated"
    assert codec.error is not None and codec.error.code == "upstream_truncated"


def test_unknown_anthropic_events_and_fields_are_tolerated() -> None:
    body = fixture_bytes(ANTHROPIC[0])
    at = body.index(b"event: content_block_stop")
    odd = (b'event: future_event\ndata: {"type":"future_event","index":0,"whatever":[1,{"a":null}]}\n\n'
           b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
           b'{"type":"future_delta","stuff":true}}\n\n')
    plain = reassemble(translate(AnthropicCodec(request(), 1 << 20), body, []))[0]
    with_odd = reassemble(translate(AnthropicCodec(request(), 1 << 20), body[:at] + odd + body[at:], []))[0]
    assert with_odd == plain and plain.text


def test_preamble_alone_does_not_start_the_stream() -> None:
    codec = AnthropicCodec(request(), 1 << 20)
    assert codec.feed(ANTHROPIC_START) == b"" and not codec.started
    assert codec.feed(b'event: ping\ndata: {"type": "ping"}\n\n') == b"" and not codec.started
    first = codec.feed(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                       b'"delta":{"type":"text_delta","text":"Hi"}}\n\n')
    assert codec.started
    chunks = [json.loads(e.data) for e in SSEDecoder().feed(first)]
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}, {"content": "Hi"}]
    assert chunks[0]["id"] == "msg_019Q1hrJbZG26Fb9BQhrkHEr"


def test_gemini_thought_signature_rides_along_in_extra_content() -> None:
    path = FIXTURES / "gemini" / "sse" / "pydantic-ai-gemini3-function-call-thought-signature.sse"
    _, chunks, _ = reassemble(translate(GeminiCodec(request(), 1 << 20), fixture_bytes(path), []))
    calls = [c for chunk in chunks for ch in chunk["choices"] for c in ch["delta"].get("tool_calls") or []]
    assert len(calls) == 1
    assert calls[0]["extra_content"]["google"]["thought_signature"].startswith("EpwICpkI")


def test_error_event_from_the_gateway_is_openai_shaped() -> None:
    event = AnthropicCodec(request(), 1024).error_event("timeout_idle", "no event for 60s")
    assert json.loads(SSEDecoder().feed(event)[0].data) == {
        "error": {"message": "no event for 60s", "type": "server_error", "param": None, "code": "timeout_idle"}}


def test_sse_with_lone_cr_line_ends_still_translates() -> None:
    body = fixture_bytes(ANTHROPIC[0]).replace(b"\n", b"\r")
    got, _, done = reassemble(translate(AnthropicCodec(request(), 1 << 20), body, [100, 1000]))
    assert done and got.text == expect_anthropic(fixture_bytes(ANTHROPIC[0])).text


def test_created_and_id_come_from_the_request_when_the_provider_has_no_id() -> None:
    _, chunks, _ = reassemble(translate(OllamaCodec(request(), 1 << 20), fixture_bytes(OLLAMA[0]), []))
    assert {c["id"] for c in chunks} == {"chatcmpl-req1"}
    assert int(time.time()) > chunks[0]["created"] == 1_700_000_000


def test_gemini_finish_reason_on_every_chunk_gives_one_finish_chunk_at_the_end() -> None:
    body = (FIXTURES / "gemini" / "json-array" / "kong-first-network-read.part").read_bytes() + b"]"
    assert body.count(b'"finishReason": "STOP"') > 1
    got, chunks, done = reassemble(translate(GeminiCodec(request(), 1 << 20), body, [500, 1500]))
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert done and finishes == ["stop"] and got.text == expect_gemini_array(body).text
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"  # after all content, before the usage chunk
