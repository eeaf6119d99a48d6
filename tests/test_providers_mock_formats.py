"""The mock upstream's provider formats, read by each provider's official SDK, so that a shape mistake cannot hide
in both the mock and the adapter: anthropic's client and event types, google-genai's client and its strict
(extra fields forbidden) response types, botocore's client with its ConverseStream event-stream parser."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import botocore.session
import pydantic
import pytest
from anthropic.types import RawMessageStreamEvent
from botocore.exceptions import EventStreamError
from google import genai
from google.genai import types as gtypes

from sluicegate.mock.tokens import default_reply
from sluicegate.wire.sse import SSEDecoder
from tests.support.procs import Proc, start_mock

TEXT = "Seven words make up this mock reply."
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def mocks() -> Iterator[dict[str, Proc]]:
    procs = {fmt: start_mock("--format", fmt) for fmt in ("anthropic", "gemini", "gemini-array", "bedrock", "ollama")}
    yield procs
    for proc in procs.values():
        proc.stop()


def post(url: str, body: dict[str, Any]) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()  # type: ignore[no-any-return]


# --- anthropic ---------------------------------------------------------------------------------------------------
def test_anthropic_sdk_streams_and_accumulates_the_mock(mocks: dict[str, Proc]) -> None:
    client = anthropic.Anthropic(base_url=mocks["anthropic"].url, api_key="k", max_retries=0, timeout=10)
    with client.messages.stream(model="claude-mock", max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                                extra_body={"mock": {"text": TEXT}}) as stream:
        message = stream.get_final_message()
    assert message.content[0].type == "text" and message.content[0].text == TEXT
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == len(TEXT.split())
    assert message.model == "claude-mock" and message.id.startswith("msg_")
    final = client.messages.create(model="claude-mock", max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"mock": {"text": TEXT, "finish_reason": "length"}})
    assert final.content[0].type == "text" and final.content[0].text == TEXT and final.stop_reason == "max_tokens"


def test_anthropic_mock_events_validate_as_sdk_types(mocks: dict[str, Proc]) -> None:
    raw = post(f"{mocks['anthropic'].url}/v1/messages", {"model": "m", "max_tokens": 10, "stream": True,
                                                          "messages": [], "mock": {"tokens": 3}})
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)
    events = [e for e in SSEDecoder().feed(raw)]
    kinds = [adapter.validate_json(e.data).type for e in events if e.event != "ping"]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert all(json.loads(e.data)["type"] == e.event for e in events)


def test_anthropic_sdk_raises_on_the_mock_error_events(mocks: dict[str, Proc]) -> None:
    client = anthropic.Anthropic(base_url=mocks["anthropic"].url, api_key="k", max_retries=0, timeout=10)
    with (pytest.raises(anthropic.APIStatusError) as info,
          client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                                 extra_body={"mock": {"error_after": 2}}) as stream):
        stream.get_final_message()
    assert "overloaded_error" in str(info.value.body) or "mock upstream error" in str(info.value)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                               extra_body={"mock": {"status": 429}})


# --- gemini ------------------------------------------------------------------------------------------------------
def _genai(url: str, mock: dict[str, Any]) -> tuple[genai.Client, gtypes.GenerateContentConfig]:
    client = genai.Client(api_key="k", http_options=gtypes.HttpOptions(base_url=url, retry_options=None))
    config = gtypes.GenerateContentConfig(http_options=gtypes.HttpOptions(extra_body={"mock": mock}))
    return client, config


def test_google_genai_sdk_streams_the_mock(mocks: dict[str, Proc]) -> None:
    client, config = _genai(mocks["gemini"].url, {"text": TEXT})
    chunks = list(client.models.generate_content_stream(model="gemini-mock", contents="hi", config=config))
    assert "".join(c.text or "" for c in chunks) == TEXT
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == gtypes.FinishReason.STOP
    assert last.usage_metadata is not None and last.usage_metadata.candidates_token_count == len(TEXT.split())
    assert last.model_version == "gemini-mock"
    whole = client.models.generate_content(model="gemini-mock", contents="hi", config=config)
    assert whole.text == TEXT


@pytest.mark.parametrize("fmt", ["gemini", "gemini-array"])
def test_gemini_mock_chunks_validate_strictly(mocks: dict[str, Proc], fmt: str) -> None:
    raw = post(f"{mocks[fmt].url}/v1beta/models/gm:streamGenerateContent?alt=sse", {"contents": [], "mock": {
        "tokens": 4}})
    if fmt == "gemini":
        assert raw.count(b"\r\n\r\n") == 5
        objects = [json.loads(e.data) for e in SSEDecoder().feed(raw)]
    else:
        assert raw.startswith(b"[") and raw.endswith(b"]")
        objects = json.loads(raw)
    responses = [gtypes.GenerateContentResponse.model_validate(obj) for obj in objects]  # extra="forbid"
    assert "".join(r.text or "" for r in responses) == default_reply(4)


def test_gemini_array_error_element_closes_the_array(mocks: dict[str, Proc]) -> None:
    raw = post(f"{mocks['gemini-array'].url}/v1beta/models/gm:streamGenerateContent",
               {"contents": [], "mock": {"tokens": 4, "error_after": 2}})
    elements = json.loads(raw)
    assert len(elements) == 3 and elements[-1]["error"]["status"] == "UNAVAILABLE"


# --- bedrock -----------------------------------------------------------------------------------------------------
def _bedrock(url: str, mock: dict[str, Any] | None = None) -> Any:
    session = botocore.session.get_session()
    client = session.create_client("bedrock-runtime", region_name="us-east-1", endpoint_url=url,
                                   aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    if mock is not None:
        def add_mock(request: Any, **_: Any) -> None:
            request.data = json.dumps({**json.loads(request.data), "mock": mock}).encode()
        client.meta.events.register("before-sign.bedrock-runtime.*", add_mock)
    return client


def test_botocore_parses_the_mock_converse_stream(mocks: dict[str, Proc]) -> None:
    client = _bedrock(mocks["bedrock"].url, {"text": TEXT})
    response = client.converse_stream(modelId="anthropic.claude-mock-v1:0",
                                      messages=[{"role": "user", "content": [{"text": "hi"}]}])
    events = list(response["stream"])
    assert list(events[0]) == ["messageStart"] and events[0]["messageStart"]["role"] == "assistant"
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == TEXT
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == len(TEXT.split())
    whole = client.converse(modelId="m", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert whole["output"]["message"]["content"][0]["text"] == TEXT and whole["stopReason"] == "end_turn"


def test_botocore_raises_the_mock_exception_frame(mocks: dict[str, Proc]) -> None:
    client = _bedrock(mocks["bedrock"].url, {"error_after": 2})
    response = client.converse_stream(modelId="m", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    with pytest.raises(EventStreamError) as info:
        list(response["stream"])
    assert info.value.response["Error"] == {"Code": "serviceUnavailableException", "Message": "mock upstream error"}


# --- ollama ------------------------------------------------------------------------------------------------------
def test_ollama_mock_lines_have_the_recorded_shape(mocks: dict[str, Proc]) -> None:
    recorded = [json.loads(line) for line in (FIXTURES / "ollama" / "prism-granite3-basic-text.ndjson")
                .read_bytes().splitlines()]
    raw = post(f"{mocks['ollama'].url}/api/chat", {"model": "llama", "messages": [], "mock": {"tokens": 3}})
    lines = [json.loads(line) for line in raw.splitlines()]
    assert [set(line) for line in lines[:-1]] == [set(recorded[0])] * 3
    assert set(lines[-1]) == set(recorded[-1]) and lines[-1]["done"] is True and lines[-1]["eval_count"] == 3
    assert "".join(line["message"]["content"] for line in lines) == default_reply(3)
    whole = json.loads(post(f"{mocks['ollama'].url}/api/chat", {"model": "llama", "messages": [], "stream": False,
                                                                 "mock": {"tokens": 3}}))
    assert whole["message"]["content"] == default_reply(3) and whole["done"] is True
