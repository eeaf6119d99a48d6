"""Translated providers end to end over real sockets: the official openai SDK -> a gateway process -> the mock
upstream process speaking Anthropic, Gemini (SSE and JSON array), Bedrock or Ollama. Tool calls and first-event
errors come from an in-process upstream replaying recorded provider bodies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from sluicegate.mock.formats.bedrock import exception_frame
from tests.support.http import mock_request
from tests.support.procs import Proc, start_gateway, start_mock
from tests.support.replay import ThreadedReplayUpstream

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FORMATS = ["anthropic", "gemini", "gemini-array", "bedrock", "ollama"]
PROVIDER = {"anthropic": "anthropic", "gemini": "gemini", "gemini-array": "gemini", "bedrock": "bedrock",
            "ollama": "ollama"}
API_PATH = {"anthropic": "/v1", "gemini": "/v1beta", "gemini-array": "/v1beta", "bedrock": "", "ollama": ""}
AWS_ENV = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "test-secret",
           "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_EC2_METADATA_DISABLED": "true"}
TEXT = "Translated streams must reassemble into exactly these words, spaces and all."

FIRST_ERRORS: dict[str, tuple[bytes, str, int]] = {  # body, content type, status when nothing else is tried
    "anthropic": (b'event: error\ndata: {"type":"error","error":{"details":null,"type":"overloaded_error",'
                  b'"message":"Overloaded"},"request_id":"req_1"}\n\n', "text/event-stream", 503),
    "gemini": (b'data: {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}'
               b"\r\n\r\n", "text/event-stream", 429),
    "bedrock": (exception_frame("throttlingException", "Too many requests"), "application/vnd.amazon.eventstream",
                429),
    "ollama": (b'{"error":"server overloaded, please retry shortly"}\n', "application/x-ndjson", 503),
}
TOOL_FIXTURES = {
    "anthropic": (FIXTURES / "anthropic" / "sdk-python-tool-use.sse", [("get_weather", {"location": "Paris"})]),
    "gemini": (FIXTURES / "gemini" / "sse" / "pydantic-ai-gemini3-function-call-thought-signature.sse",
               [("get_country", {})]),
    "bedrock": (FIXTURES / "bedrock" / "pydantic-ai-nova-micro-tool-use-then-text.bin",
                [("get_temperature", {"city": "Paris"})]),
    "ollama": (FIXTURES / "ollama" / "prism-qwen3-two-tool-calls.ndjson",
               [("weather", {"city": "Detroit"}), ("search", {"query": "Detroit Tigers game time today"})]),
}


def _deployment(fmt: str, api_base: str) -> dict[str, Any]:
    return {"provider": PROVIDER[fmt], "api_base": api_base, "model": "up-model", "api_key": "upstream-key",
            "forward_fields": ["mock"]}


@pytest.fixture(scope="module")
def mocks() -> Iterator[dict[str, Proc]]:
    procs = {fmt: start_mock("--format", fmt) for fmt in FORMATS}
    yield procs
    for proc in procs.values():
        proc.stop()


@pytest.fixture(scope="module")
def replay() -> Iterator[ThreadedReplayUpstream]:
    upstream = ThreadedReplayUpstream(seed=5)
    upstream.start_sync()
    yield upstream
    upstream.stop_sync()


@pytest.fixture(scope="module")
def gateway(mocks: dict[str, Proc], replay: ThreadedReplayUpstream) -> Iterator[Proc]:
    models: list[dict[str, Any]] = []
    for fmt in FORMATS:
        real = _deployment(fmt, mocks[fmt].url + API_PATH[fmt])
        models.append({"name": fmt, "deployments": [real], "retry": {"attempts": 1}})
        failing = _deployment(fmt, replay.url)
        models.append({"name": f"{fmt}-retry", "deployments": [failing, real], "allowed_fails": 100,
                       "retry": {"attempts": 2, "backoff_initial": "10ms", "backoff_max": "20ms"},
                       "retry_budget": {"ratio": 1.0, "min_per_second": 100}})
        if fmt in FIRST_ERRORS:
            models.append({"name": f"{fmt}-replay", "deployments": [failing], "allowed_fails": 100,
                           "retry": {"attempts": 1}})
    proc = start_gateway({"models": models}, AWS_ENV)
    yield proc
    proc.stop()


def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=20)


def chat(gateway: Proc, model: str, mock: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return client(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], extra_body={"mock": mock or {}}, **kwargs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stream_reassembles_with_usage(gateway: Proc, mocks: dict[str, Proc], fmt: str) -> None:
    tag = uuid.uuid4().hex
    chunks = list(chat(gateway, fmt, {"text": TEXT, "tag": tag}, stream=True,
                       stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {fmt}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == len(TEXT.split()) and usage.prompt_tokens >= 1
    seen = mock_request(mocks[fmt].url, tag)
    assert seen is not None
    if fmt == "bedrock":
        assert seen["headers"]["authorization"].startswith(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/") and "/us-east-1/bedrock/aws4_request" in (
            seen["headers"]["authorization"])
        assert "x-amz-date" in seen["headers"]
    elif fmt == "anthropic":
        assert seen["headers"]["x-api-key"] == "upstream-key" and seen["headers"]["anthropic-version"]
    elif fmt.startswith("gemini"):
        assert seen["headers"]["x-goog-api-key"] == "upstream-key"


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_usage_chunk_unless_asked_and_non_stream(gateway: Proc, fmt: str) -> None:
    chunks = list(chat(gateway, fmt, {"text": TEXT}, stream=True))
    assert chunks and all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    result = chat(gateway, fmt, {"text": TEXT})
    assert result.choices[0].message.content == TEXT and result.choices[0].finish_reason == "stop"
    assert result.usage is not None and result.usage.completion_tokens == len(TEXT.split())


@pytest.mark.parametrize(("fmt", "mock", "exc", "status"), [
    ("anthropic", {"status": 529}, openai.InternalServerError, 503),
    ("anthropic", {"status": 401}, openai.AuthenticationError, 401),
    ("gemini", {"status": 429, "retry_after": 2}, openai.RateLimitError, 429),
    ("gemini-array", {"status": 400}, openai.BadRequestError, 400),
    ("bedrock", {"status": 429}, openai.RateLimitError, 429),
    ("bedrock", {"status": 424}, openai.APIStatusError, 502),
    ("ollama", {"status": 404}, openai.NotFoundError, 404),
])
def test_errors_before_the_first_byte_map_to_sdk_exceptions(gateway: Proc, fmt: str, mock: dict[str, Any],
                                                            exc: type[openai.APIStatusError], status: int) -> None:
    with pytest.raises(exc) as info:
        list(chat(gateway, fmt, mock, stream=True))
    assert info.value.status_code == status
    assert "mock upstream status" in str(info.value)
    if "retry_after" in mock:
        assert info.value.response.headers.get("retry-after") == "2"


@pytest.mark.parametrize("fmt", FORMATS)
def test_mid_stream_error_raises_in_the_sdk(gateway: Proc, fmt: str) -> None:
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in chat(gateway, fmt, {"error_after": 3}, stream=True):
            received.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == "The quick brown "
    assert "mock upstream error" in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_first_event_error_is_retried_on_the_next_deployment(gateway: Proc, replay: ThreadedReplayUpstream,
                                                             fmt: str) -> None:
    body, content_type, _ = FIRST_ERRORS[PROVIDER[fmt]]
    replay.body, replay.content_type = body, content_type
    attempts = []
    for _ in range(4):  # round-robin: some requests try the failing deployment first
        raw = client(gateway).chat.completions.with_raw_response.create(
            model=f"{fmt}-retry", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_body={"mock": {"text": TEXT}})
        attempts.append(raw.headers.get("x-sluicegate-attempts"))
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == TEXT
    assert "2" in attempts


@pytest.mark.parametrize("provider", sorted(FIRST_ERRORS))
def test_first_event_error_without_retry_is_a_clean_http_error(gateway: Proc, replay: ThreadedReplayUpstream,
                                                               provider: str) -> None:
    body, content_type, status = FIRST_ERRORS[provider]
    replay.body, replay.content_type = body, content_type
    with pytest.raises(openai.APIStatusError) as info:
        list(chat(gateway, f"{provider}-replay", stream=True))
    assert info.value.status_code == status


@pytest.mark.parametrize("provider", sorted(TOOL_FIXTURES))
def test_recorded_tool_calls_reassemble_in_the_sdk(gateway: Proc, replay: ThreadedReplayUpstream,
                                                   provider: str) -> None:
    import json

    path, expected = TOOL_FIXTURES[provider]
    replay.body = path.read_bytes()
    replay.content_type = FIRST_ERRORS[provider][1]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in chat(gateway, f"{provider}-replay", stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == expected
    assert all(c["id"] for c in calls.values()) and finish == "tool_calls"
