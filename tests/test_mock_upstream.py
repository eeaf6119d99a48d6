"""The mock upstream over real sockets: wire shapes, faults, timing, keep-alive, stats and backpressure."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sluicegate.mock.behaviour import MockBehaviour
from sluicegate.mock.formats.openai import ChatCompletions
from sluicegate.mock.playback import BURST_TOKENS, StreamPlayback
from sluicegate.mock.server import MockUpstream
from sluicegate.mock.stats import MockStats, RequestRecord
from sluicegate.mock.tokens import TokenSource, default_reply

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
MOCK_ERROR = {"message": "mock upstream error", "type": "server_error", "param": None, "code": "mock_error"}


class Mock:
    """A client of one running mock upstream."""

    def __init__(self, port: int, session: aiohttp.ClientSession) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.session = session

    def post(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.session.post(self.url + path, json=body, **kwargs)

    async def get_json(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.url + path) as resp:
            return resp.status, await resp.json()

    async def stats(self) -> dict[str, Any]:
        status, body = await self.get_json("/_mock/stats")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def record(self, tag: str) -> dict[str, Any]:
        status, body = await self.get_json(f"/_mock/requests/{tag}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def wait_for_state(self, tag: str, state: str, within: float = 3.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            record = await self.record(tag)
            if record["state"] == state or time.monotonic() > deadline:
                return record
            await asyncio.sleep(0.01)


@pytest.fixture
async def mock() -> AsyncIterator[Mock]:
    server = MockUpstream()
    port = await server.start("127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        yield Mock(port, session)
    await server.stop()


def chat(stream: bool = True, **mock: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "Say something deterministic, please."}],
        "stream": stream,
    }
    if mock:
        body["mock"] = mock
    return body


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) per event; enough SSE for the mock's own output."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


def data_events(text: str) -> list[Any]:
    return [data if data == "[DONE]" else json.loads(data) for _, data in parse_sse(text)]


async def stream_text(mock: Mock, path: str, body: dict[str, Any]) -> str:
    async with mock.post(path, body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        text: str = await resp.text()
        return text


def schedstat_cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of the main thread of process `pid`."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def raw_request(path: str, body: dict[str, Any], extra_headers: str = "") -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n{extra_headers}\r\n"
    )
    return head.encode() + payload


async def read_chunked_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a chunked body, parsed strictly: (status, body)."""
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    assert headers["transfer-encoding"] == "chunked"
    body = b""
    while True:
        size = int((await reader.readline()).strip(), 16)
        data = await reader.readexactly(size + 2)
        assert data.endswith(b"\r\n")
        if size == 0:
            return status, body
        body += data[:-2]


# ---- OpenAI chat stream shape


async def test_default_chat_stream_is_deterministic_and_in_order(mock: Mock) -> None:
    events = data_events(await stream_text(mock, CHAT, chat()))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) == 1 + 20 + 1  # role chunk, 20 tokens, finish chunk
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    ids = {chunk["id"] for chunk in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "test-model"
        assert isinstance(chunk["created"], int)
        assert chunk["system_fingerprint"] is None
        assert "usage" not in chunk
    content = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:-1])
    assert content.startswith("The quick brown fox jumps over the lazy dog while")
    assert content == default_reply(20)
    assert not content.endswith(" ")


async def test_usage_chunk_follows_stream_options_and_mock_overrides(mock: Mock) -> None:
    with_usage = {**chat(), "stream_options": {"include_usage": True}}
    events = data_events(await stream_text(mock, CHAT, with_usage))
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 20
    assert usage["prompt_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + 20
    assert all(chunk["usage"] is None for chunk in events[:-2])

    turned_off = {**with_usage, "mock": {"usage": False}}
    events = data_events(await stream_text(mock, CHAT, turned_off))
    assert all("usage" not in chunk for chunk in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"

    turned_on = chat(usage=True, tokens=2)
    events = data_events(await stream_text(mock, CHAT, turned_on))
    assert events[-2]["usage"]["completion_tokens"] == 2


async def test_text_token_bytes_and_finish_reason(mock: Mock) -> None:
    events = data_events(await stream_text(mock, CHAT, chat(text="Hello  big\nworld", finish_reason="length")))
    deltas = [chunk["choices"][0]["delta"].get("content") for chunk in events[1:-2]]
    assert deltas == ["Hello ", "big ", "world"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"

    events = data_events(await stream_text(mock, CHAT, chat(tokens=3, token_bytes=100)))
    deltas = [chunk["choices"][0]["delta"]["content"] for chunk in events[1:-2]]
    assert [len(delta.encode()) for delta in deltas] == [100, 100, 100]
    assert deltas[0].startswith("The ")


async def test_server_defaults_apply_and_the_request_overrides_them() -> None:
    server = MockUpstream(defaults=MockBehaviour(tokens=3, text="one two three four"))
    port = await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            mock = Mock(port, session)
            events = data_events(await stream_text(mock, CHAT, chat()))
            assert [c["choices"][0]["delta"].get("content") for c in events[1:-2]] == [
                "one ",
                "two ",
                "three ",
                "four",
            ]
            events = data_events(await stream_text(mock, CHAT, chat(text=None, tokens=2, tag="d2")))
            assert len(events) == 1 + 2 + 1 + 1
        record = server.request("d2")
        assert record is not None and record["tokens_sent"] == 2
        assert server.stats["requests"] == 2
        server.reset_stats()
        assert server.stats["requests"] == 0 and server.request("d2") is None
    finally:
        await server.stop()


# ---- status and faults


async def test_status_answers_with_an_openai_error_and_retry_after(mock: Mock) -> None:
    async with mock.post(CHAT, chat(status=503, retry_after=1.2, tag="s503")) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert "503" in error["message"]
    async with mock.post(CHAT, chat(status=429)) as resp:
        assert resp.status == 429
        assert "Retry-After" not in resp.headers
        assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
    record = await mock.record("s503")
    assert record["state"] == "status"
    assert record["ended"] is not None
    assert (await mock.stats())["status_counts"] == {"503": 1, "429": 1}


async def test_error_after_sends_one_error_event_and_ends_cleanly(mock: Mock) -> None:
    events = data_events(await stream_text(mock, CHAT, chat(tokens=10, error_after=3, tag="err3")))
    assert len(events) == 1 + 3 + 1
    assert [chunk["choices"][0]["delta"]["content"] for chunk in events[1:4]] == ["The ", "quick ", "brown "]
    assert events[-1] == {"error": MOCK_ERROR}
    record = await mock.record("err3")
    assert (record["state"], record["tokens_sent"]) == ("errored", 3)

    async with mock.post(CHAT, chat(error_after=0)) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert text == "data: " + json.dumps({"error": MOCK_ERROR}, separators=(",", ":")) + "\n\n"


async def test_a_fault_past_the_last_token_replaces_the_normal_end(mock: Mock) -> None:
    events = data_events(await stream_text(mock, CHAT, chat(tokens=2, error_after=50)))
    assert len(events) == 1 + 2 + 1
    assert events[-1] == {"error": MOCK_ERROR}


async def test_reset_after_resets_the_connection(mock: Mock) -> None:
    async with mock.post(CHAT, chat(tokens=50, reset_after=2, tag="rst")) as resp:
        assert resp.status == 200
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            await resp.read()
    record = await mock.record("rst")
    assert (record["state"], record["tokens_sent"]) == ("reset", 2)

    # A raw socket tells a reset (ECONNRESET) from an orderly close (EOF).
    loop = asyncio.get_running_loop()
    with socket.create_connection(("127.0.0.1", mock.port)) as sock:
        sock.setblocking(False)
        await loop.sock_sendall(sock, raw_request(CHAT, chat(tokens=50, reset_after=1)))
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b'"content":"The "' in received
        assert b"[DONE]" not in received


async def test_stall_after_keeps_the_connection_open_until_the_peer_closes(mock: Mock) -> None:
    resp = await mock.post(CHAT, chat(tokens=10, stall_after=2, tag="stall"))
    assert resp.status == 200
    seen = b""
    while seen.count(b'"content":"') < 3:  # role chunk + 2 tokens
        seen += await asyncio.wait_for(resp.content.readany(), 5)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(resp.content.readany(), 0.3)
    record = await mock.record("stall")
    assert (record["state"], record["tokens_sent"], record["ended"]) == ("stalled", 2, None)
    assert (await mock.stats())["active"] == 1
    closed_at = time.monotonic()
    resp.close()
    record = await mock.wait_for_state("stall", "peer_closed")
    assert record["state"] == "peer_closed"
    assert closed_at - 0.05 <= record["peer_closed_at"] <= closed_at + 1.0
    assert (await mock.stats())["active"] == 0

    resp = await mock.post(CHAT, chat(stall_after=0))
    assert resp.status == 200
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(resp.content.readany(), 0.3)
    resp.close()


# ---- timing


async def test_headers_delay_and_first_delay(mock: Mock) -> None:
    started = time.monotonic()
    async with mock.post(CHAT, chat(tokens=1, headers_delay=0.3)) as resp:
        headers_at = time.monotonic() - started
        await resp.read()
    assert 0.28 <= headers_at < 3.0

    started = time.monotonic()
    async with mock.post(CHAT, chat(tokens=1, first_delay=0.4)) as resp:
        headers_at = time.monotonic() - started
        await resp.content.readany()
        first_event_at = time.monotonic() - started
        await resp.read()
    assert first_event_at - headers_at >= 0.3
    assert first_event_at < 3.0


async def test_interval_paces_the_tokens(mock: Mock) -> None:
    arrivals = []
    async with mock.post(CHAT, chat(tokens=8, interval=0.06)) as resp:
        async for line in resp.content:
            if b'"content":"' in line and b'"role"' not in line:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 8
    span = arrivals[-1] - arrivals[0]
    assert 7 * 0.06 * 0.8 <= span < 3.0
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(arrivals))
    assert gaps[len(gaps) // 2] >= 0.04  # the median gap is about one interval, not a burst


async def test_non_stream_reply_waits_for_first_delay_plus_the_tokens(mock: Mock) -> None:
    started = time.monotonic()
    async with mock.post(CHAT, chat(stream=False, tokens=4, interval=0.05, first_delay=0.2)) as resp:
        assert resp.status == 200
        await resp.read()
    assert 0.35 <= time.monotonic() - started < 3.0


# ---- other formats and non-stream bodies


async def test_completions_stream(mock: Mock) -> None:
    body = {"model": "m", "prompt": "Once upon a time", "stream": True, "stream_options": {"include_usage": True}}
    body["mock"] = {"tokens": 3}
    events = data_events(await stream_text(mock, COMPLETIONS, body))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert [chunk["choices"][0]["text"] for chunk in chunks[:3]] == ["The ", "quick ", "brown"]
    assert chunks[3]["choices"] == [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"]["completion_tokens"] == 3


async def test_responses_stream_has_typed_events_and_no_done(mock: Mock) -> None:
    body = {"model": "m", "input": "Tell me something.", "stream": True, "mock": {"tokens": 4}}
    text = await stream_text(mock, RESPONSES, body)
    assert "[DONE]" not in text
    events = parse_sse(text)
    payloads = [json.loads(data) for _, data in events]
    assert [name for name, _ in events] == [payload["type"] for payload in payloads]
    assert [payload["sequence_number"] for payload in payloads] == list(range(len(payloads)))
    assert [payload["type"] for payload in payloads] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = payloads[4:8]
    assert {(d["output_index"], d["content_index"]) for d in deltas} == {(0, 0)}
    assert len({d["item_id"] for d in deltas}) == 1
    assert "".join(d["delta"] for d in deltas) == default_reply(4) == payloads[8]["text"]
    completed = payloads[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == default_reply(4)
    usage = completed["usage"]
    assert usage["output_tokens"] == 4
    assert usage["total_tokens"] == usage["input_tokens"] + 4

    body["mock"] = {"tokens": 4, "error_after": 2}
    events = parse_sse(await stream_text(mock, RESPONSES, body))
    name, data = events[-1]
    assert name == "error"
    assert json.loads(data) == {
        "type": "error",
        "sequence_number": len(events) - 1,
        "code": "mock_error",
        "message": "mock upstream error",
        "param": None,
    }


async def test_non_stream_bodies(mock: Mock) -> None:
    async with mock.post(CHAT, chat(stream=False, tokens=5)) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        reply = await resp.json()
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": default_reply(5), "refusal": None}
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == 5

    async with mock.post(COMPLETIONS, {"model": "m", "prompt": "x", "mock": {"tokens": 2}}) as resp:
        reply = await resp.json()
    assert reply["object"] == "text_completion"
    assert reply["choices"][0]["text"] == default_reply(2)

    async with mock.post(RESPONSES, {"model": "m", "input": "x", "mock": {"tokens": 3}}) as resp:
        reply = await resp.json()
    assert reply["object"] == "response"
    assert reply["status"] == "completed"
    assert reply["output"][0]["content"][0]["text"] == default_reply(3)
    assert reply["usage"]["output_tokens"] == 3

    async with mock.post(CHAT, chat(stream=False, error_after=1)) as resp:
        assert resp.status == 500
        assert (await resp.json()) == {"error": MOCK_ERROR}


# ---- request validation and routing


@pytest.mark.parametrize(
    ("mock_object", "param", "value_text"),
    [
        ({"tokens": -1}, "mock.tokens", "-1"),
        ({"tokens": "5"}, "mock.tokens", '"5"'),
        ({"tokens": True}, "mock.tokens", "true"),
        ({"interval": -0.5}, "mock.interval", "-0.5"),
        ({"first_delay": "soon"}, "mock.first_delay", '"soon"'),
        ({"status": 200}, "mock.status", "200"),
        ({"status": 600}, "mock.status", "600"),
        ({"error_after": 1.5}, "mock.error_after", "1.5"),
        ({"stall_after": -2}, "mock.stall_after", "-2"),
        ({"usage": "yes"}, "mock.usage", '"yes"'),
        ({"token_bytes": 0}, "mock.token_bytes", "0"),
        ({"finish_reason": ""}, "mock.finish_reason", '""'),
        ({"tag": 7}, "mock.tag", "7"),
        ({"tokenz": 3}, "mock.tokenz", "allowed fields"),
        ([1, 2], "mock", "[1,2]"),
    ],
)
async def test_bad_mock_values_are_rejected_naming_the_field(
    mock: Mock, mock_object: Any, param: str, value_text: str
) -> None:
    async with mock.post(CHAT, {**chat(), "mock": mock_object}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]
    assert value_text in error["message"]
    if param != "mock.tokenz":
        assert "must" in error["message"]


async def test_bad_json_unknown_path_wrong_method_and_models(mock: Mock) -> None:
    async with mock.session.post(mock.url + CHAT, data=b"{not json") as resp:
        assert resp.status == 400
        assert "JSON" in (await resp.json())["error"]["message"]
    async with mock.post(CHAT, [1, 2, 3]) as resp:
        assert resp.status == 400
    async with mock.post("/v1/nope", {}) as resp:
        assert resp.status == 404
        assert set((await resp.json())["error"]) == {"message", "type", "param", "code"}
    status, _ = await mock.get_json(CHAT)
    assert status == 405
    status, models = await mock.get_json("/v1/models")
    assert status == 200
    assert models == {
        "object": "list",
        "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "sluicegate-mock"}],
    }
    status, _ = await mock.get_json("/_mock/requests/never-seen")
    assert status == 404


# ---- connections, stats, tags


async def test_keep_alive_and_pipelining_on_one_connection(mock: Mock) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
    try:
        for tokens in (2, 3):
            writer.write(raw_request(CHAT, chat(tokens=tokens)))
            status, body = await asyncio.wait_for(read_chunked_response(reader), 5)
            assert status == 200
            assert body.count(b'"content":"') == 1 + tokens and body.endswith(b"data: [DONE]\n\n")
        # Two requests in one write: answered in order on the same connection.
        writer.write(raw_request(CHAT, chat(tokens=1, interval=0.05)) + raw_request(CHAT, chat(tokens=4)))
        first = await asyncio.wait_for(read_chunked_response(reader), 5)
        second = await asyncio.wait_for(read_chunked_response(reader), 5)
        assert first[1].count(b'"content":"') == 2
        assert second[1].count(b'"content":"') == 5
    finally:
        writer.close()
    assert (await mock.stats())["requests"] == 4


async def test_peer_close_mid_stream_is_recorded_with_its_time(mock: Mock) -> None:
    resp = await mock.post(CHAT, chat(tokens=1000, interval=0.01, tag="gone"), headers={"X-Probe": "1"})
    seen = b""
    while seen.count(b'"content":"') < 4:
        seen += await asyncio.wait_for(resp.content.readany(), 5)
    closed_at = time.monotonic()
    resp.close()
    record = await mock.wait_for_state("gone", "peer_closed")
    assert record["state"] == "peer_closed"
    assert closed_at - 0.05 <= record["peer_closed_at"] <= closed_at + 1.0
    assert record["ended"] == record["peer_closed_at"]
    assert 3 <= record["tokens_sent"] < 1000
    assert record["headers"]["x-probe"] == "1"
    await asyncio.sleep(0.1)  # no timer may fire for a closed stream
    assert (await mock.record("gone"))["tokens_sent"] == record["tokens_sent"]
    stats = await mock.stats()
    assert (stats["peer_closed"], stats["active"]) == (1, 0)


async def test_stats_count_concurrency_and_reset_forgets_tags(mock: Mock) -> None:
    async def one(tag: str) -> None:
        await stream_text(mock, CHAT, chat(tokens=6, interval=0.05, tag=tag))

    tasks = [asyncio.create_task(one(f"c{i}")) for i in range(5)]
    for _ in range(300):
        if (await mock.stats())["active"] == 5:
            break
        await asyncio.sleep(0.01)
    status, during = await mock.get_json("/_mock/stats")
    assert status == 200 and during["active"] == 5
    await asyncio.gather(*tasks)
    async with mock.post(COMPLETIONS, {"prompt": "x", "mock": {"tokens": 1}}) as resp:
        await resp.read()
    _, stats = await mock.get_json("/_mock/stats")
    assert stats["active"] == 0
    assert stats["high_water"] == 5
    assert stats["requests"] == stats["completed"] == 6
    assert stats["by_path"] == {CHAT: 5, COMPLETIONS: 1}
    assert stats["status_counts"] == {"200": 6}
    record = await mock.record("c3")
    assert record["state"] == "completed" and record["tokens_sent"] == 6
    assert record["started"] < record["ended"]

    async with mock.session.post(mock.url + "/_mock/reset") as resp:
        assert resp.status == 200
    _, stats = await mock.get_json("/_mock/stats")
    assert (stats["requests"], stats["high_water"], stats["completed"], stats["by_path"]) == (0, 0, 0, {})
    status, _ = await mock.get_json("/_mock/requests/c3")
    assert status == 404


async def test_tag_record_keeps_request_headers_and_body_as_received(mock: Mock) -> None:
    body = {**chat(tokens=1, tag="fwd"), "unknown_field": {"nested": [1, 2]}, "temperature": 0.3}
    async with mock.post(CHAT, body, headers={"X-Custom": "abc", "Authorization": "Bearer k"}) as resp:
        await resp.read()
    record = await mock.record("fwd")
    assert record["body"] == body
    assert record["headers"]["x-custom"] == "abc"
    assert record["headers"]["authorization"] == "Bearer k"
    assert record["headers"]["content-type"] == "application/json"


def test_tag_store_keeps_only_the_newest_tags() -> None:
    stats = MockStats(max_tags=3)
    records = [RequestRecord("/p") for _ in range(5)]
    for i, record in enumerate(records):
        stats.remember(f"t{i}", record)
    assert stats.lookup("t0") is None and stats.lookup("t1") is None
    assert stats.lookup("t4") is records[4]


# ---- flow control and cost


async def test_backpressure_blocks_a_reader_that_reads_nothing(mock: Mock) -> None:
    total = 300_000
    loop = asyncio.get_running_loop()
    rss_before = rss_bytes()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # keep the kernel's share small
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", mock.port))
        await loop.sock_sendall(sock, raw_request(CHAT, chat(tokens=total, token_bytes=100, tag="bp")))
        await asyncio.sleep(1.0)
        record = await mock.record("bp")
        sent_while_blocked = record["tokens_sent"]
        assert record["state"] == "streaming"
        assert 0 < sent_while_blocked < total // 10  # ~30 MB requested; the mock stopped early
        assert rss_bytes() - rss_before < 8 * 1024 * 1024
        await asyncio.sleep(0.2)
        assert (await mock.record("bp"))["tokens_sent"] == sent_while_blocked  # blocked, not slow

        read = 0
        while read < 4 * 1024 * 1024:  # draining resumes the stream
            read += len(await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5))
        assert (await mock.record("bp"))["tokens_sent"] > sent_while_blocked
    record = await mock.wait_for_state("bp", "peer_closed")
    assert record["state"] == "peer_closed"


async def test_firehose_bursts_are_bounded_and_yield_to_the_loop() -> None:
    loop = asyncio.get_running_loop()
    writes: list[tuple[int, int]] = []  # (probe ticks seen so far, token events in the write)
    probe_ticks = 0
    done = loop.create_future()

    class RecordingSink:
        paused = False

        def __init__(self) -> None:
            self.loop = loop

        def write(self, data: bytes) -> None:
            writes.append((probe_ticks, data.count(b'"content":"')))

        def write_buffer_size(self) -> int:
            return 0

        def reset(self) -> None:
            raise AssertionError("no reset expected")

        def response_done(self, playback: object) -> None:
            done.set_result(None)

    def probe() -> None:
        nonlocal probe_ticks
        probe_ticks += 1
        if not done.done():
            loop.call_soon(probe)

    stats = MockStats()
    record = RequestRecord(CHAT)
    stats.begin(record)
    encoder_format = ChatCompletions()
    info = encoder_format.describe({"model": "m"})
    source = TokenSource.for_behaviour(MockBehaviour(tokens=1000))
    playback = StreamPlayback(
        RecordingSink(),
        record,
        stats,
        keep_alive=True,
        encoder=encoder_format.open(info, source, False),
        content_type="text/event-stream",
        count=1000,
        interval=0.0,
        headers_delay=0.0,
        first_delay=0.0,
        finish_reason="stop",
        fault=None,
        fault_at=0,
    )
    loop.call_soon(probe)
    playback.start()
    await asyncio.wait_for(done, 5)
    assert sum(count for _, count in writes) == 1 + 1000  # role chunk + tokens
    assert max(count for _, count in writes) <= BURST_TOKENS + 1
    ticks = [tick for tick, _ in writes]
    assert len(set(ticks)) == len(ticks)  # the loop ran other callbacks between any two bursts


_CLI_RUNNER = (
    "import argparse, sys; from sluicegate.mock import cli; p = argparse.ArgumentParser(); "
    "cli.configure_parser(p); sys.exit(cli.run(p.parse_args(sys.argv[1:])))"
)


async def test_cli_serves_on_uvloop_and_costs_little_cpu_per_event() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLI_RUNNER, "--port", "0", "--tokens", "5", stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        match = re.fullmatch(r"mock-upstream listening on http://127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        port = int(match.group(1))
        async with aiohttp.ClientSession() as session:
            mock = Mock(port, session)
            events = data_events(await stream_text(mock, CHAT, chat()))  # --tokens 5 is the default
            assert len(events) == 1 + 5 + 1 + 1
            async with mock.post(CHAT, chat(tokens=20, reset_after=1)) as resp:
                with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
                    await resp.read()

            tokens = 100_000
            cpu_before = schedstat_cpu_ns(proc.pid)
            body = await stream_text(mock, CHAT, chat(tokens=tokens))
            cpu_ns = schedstat_cpu_ns(proc.pid) - cpu_before
        assert body.count("\n\n") == tokens + 3
        us_per_event = cpu_ns / 1000 / (tokens + 3)
        print(f"mock CPU per event (firehose, uvloop): {us_per_event:.2f} us")
        assert us_per_event < 10.0
    finally:
        proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(proc.wait(), 10)
    assert exit_code == 0
