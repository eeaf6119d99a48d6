"""The core pass-through, driven by the official openai SDK (sync and async) through a real gateway process in
front of the real mock upstream process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import openai
import pytest

from tests.support.http import metric, mock_request, wait_for
from tests.support.procs import Proc, one_model, start_gateway

TEXT = "The quick brown fox jumps over the lazy dog, and then it streams a few more words for good measure."


@pytest.fixture(scope="module")
def gateway(mock_upstream: Proc) -> Iterator[Proc]:
    config = one_model(f"{mock_upstream.url}/v1", name="m", retry={"attempts": 1})
    proc = start_gateway(config)
    yield proc
    proc.stop()


def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=20)


def tag() -> str:
    return uuid.uuid4().hex


def test_sync_stream_reassembles_exactly_with_usage(gateway: Proc) -> None:
    stream = client(gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}, extra_body={"mock": {"text": TEXT}},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == TEXT
    assert len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.completion_tokens == len(TEXT.split())
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_usage_chunk_not_forwarded_when_client_did_not_ask(gateway: Proc) -> None:
    chunks = list(client(gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, extra_body={"mock": {"text": TEXT}},
    ))
    assert all(c.choices for c in chunks), "the usage chunk the gateway asked for must be stripped"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    # ... but the gateway still measured the tokens.
    assert metric(gateway.url, "sluicegate_tokens_total", model="m", kind="completion") >= len(TEXT.split())


async def test_async_stream_reassembles(gateway: Proc) -> None:
    aclient = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=20)
    stream = await aclient.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True},
        extra_body={"mock": {"text": TEXT, "interval": 0.002}},
    )
    parts = []
    usage = None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    await aclient.close()
    assert "".join(parts) == TEXT
    assert usage is not None and usage.completion_tokens == len(TEXT.split())


def test_non_stream_chat(gateway: Proc) -> None:
    result = client(gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_body={"mock": {"text": TEXT}},
    )
    assert result.choices[0].message.content == TEXT
    assert result.usage is not None and result.usage.completion_tokens == len(TEXT.split())


def test_completions_stream_and_non_stream(gateway: Proc) -> None:
    c = client(gateway)
    text = "".join(ch.choices[0].text for ch in c.completions.create(
        model="m", prompt="hi", stream=True, extra_body={"mock": {"text": TEXT}}) if ch.choices)
    assert text == TEXT
    assert c.completions.create(model="m", prompt="hi", extra_body={"mock": {"text": TEXT}}).choices[0].text == TEXT


def test_responses_stream(gateway: Proc) -> None:
    events = list(client(gateway).responses.create(
        model="m", input="hi", stream=True, extra_body={"mock": {"text": TEXT}},
    ))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == TEXT
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"


def test_unknown_fields_forwarded_untouched_and_model_rewritten(gateway: Proc, mock_upstream: Proc) -> None:
    t = tag()
    body = {"mock": {"tag": t, "tokens": 2}, "temperature": 0.25, "seed": 7, "vendor_specific": {"a": [1, None]},
            "metadata": {"x": "y"}}
    list(client(gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "héllo"}], stream=True, extra_body=body,
    ))
    seen = mock_request(mock_upstream.url, t)
    assert seen is not None
    sent = seen["body"]
    assert sent["model"] == "mock-model"
    for key, value in body.items():
        assert sent[key] == value
    assert sent["messages"] == [{"role": "user", "content": "héllo"}]
    assert sent["stream_options"] == {"include_usage": True}  # added by the gateway to measure usage


@pytest.mark.parametrize(
    ("mock", "exc", "status"),
    [
        ({"status": 429, "retry_after": 3}, openai.RateLimitError, 429),
        ({"status": 401}, openai.AuthenticationError, 401),
        ({"status": 400}, openai.BadRequestError, 400),
        ({"status": 503}, openai.InternalServerError, 503),
        ({"error_after": 0}, openai.APIStatusError, 502),
    ],
)
def test_errors_before_first_byte_map_to_sdk_exceptions(gateway: Proc, mock: dict[str, object],
                                                       exc: type[openai.APIStatusError], status: int) -> None:
    with pytest.raises(exc) as info:
        list(client(gateway).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, extra_body={"mock": mock},
        ))
    assert info.value.status_code == status
    assert info.value.response.headers.get("x-request-id")
    if status == 429:
        assert info.value.response.headers.get("retry-after") == "3"


def test_unknown_model_is_404(gateway: Proc) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"


def test_error_event_after_first_byte_raises_in_sdk_and_has_no_done(gateway: Proc) -> None:
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client(gateway).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_body={"mock": {"error_after": 3}},
        ):
            received.append(chunk)
    assert len(received) == 4  # role chunk + 3 tokens
    assert "mock upstream error" in str(info.value)


def test_upstream_reset_mid_stream_becomes_error_event(gateway: Proc) -> None:
    before = metric(gateway.url, "sluicegate_streams_total", model="m", outcome="upstream_error")
    with pytest.raises(openai.APIError) as info:
        list(client(gateway).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_body={"mock": {"reset_after": 3}},
        ))
    assert "broke mid-stream" in str(info.value)
    assert wait_for(lambda: metric(gateway.url, "sluicegate_streams_total", model="m", outcome="upstream_error")
                    == before + 1, timeout=5)
    assert wait_for(lambda: metric(gateway.url, "sluicegate_streams_in_flight") == 0, timeout=5)


def test_connection_refused_is_502() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    proc = start_gateway(one_model(f"http://127.0.0.1:{port}/v1", retry={"attempts": 1}))
    try:
        with pytest.raises(openai.APIStatusError) as info:
            client(proc).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True)
        assert info.value.status_code == 502
        assert info.value.code == "upstream_connect_error"
    finally:
        proc.stop()
