"""Stream behaviour of the core pass-through, over real sockets: no buffering, disconnect closes the upstream,
heartbeats, byte-exact pass-through of recorded provider streams, SSE headers, request validation."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sluicegate.wire.sse import SSEDecoder
from tests.support.http import metric, mock_request, wait_for
from tests.support.procs import Proc, one_model, start_gateway
from tests.support.replay import FIXTURES, ReplayUpstream, ThreadedReplayUpstream


@pytest.fixture(scope="module")
def gateway(mock_upstream: Proc) -> Iterator[Proc]:
    proc = start_gateway(one_model(f"{mock_upstream.url}/v1", retry={"attempts": 1}, heartbeat_interval="200ms",
                                   timeouts={"idle": "1s"}, server={"max_body_bytes": 4096}))
    yield proc
    proc.stop()


def body(**mock: object) -> dict[str, object]:
    return {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}], "mock": mock}


async def test_no_buffering_tokens_arrive_paced(gateway: Proc) -> None:
    arrivals: list[float] = []
    decoder = SSEDecoder()
    async with aiohttp.ClientSession() as session, session.post(
        f"{gateway.url}/v1/chat/completions", json=body(tokens=6, interval=0.1)
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        while chunk := await resp.content.readany():
            now = time.monotonic()
            for event in decoder.feed(chunk):
                if '"content":"' in event.data and '"content":""' not in event.data:
                    arrivals.append(now)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 6
    # 100 ms apart at the upstream: each must arrive on its own, not in a burst at the end.
    assert all(gap > 0.05 for gap in gaps), gaps


async def _stream_then_drop(url: str, payload: dict[str, object], events_before_drop: int) -> float:
    decoder = SSEDecoder()
    seen = 0
    session = aiohttp.ClientSession()
    resp = await session.post(url, json=payload)
    try:
        while seen < events_before_drop:
            chunk = await resp.content.readany()
            assert chunk
            seen += len(decoder.feed(chunk))
    finally:
        dropped_at = time.monotonic()
        resp.close()  # closes the socket: the client is gone
        await session.close()
    return dropped_at


async def test_client_disconnect_mid_stream_closes_upstream_within_1s(gateway: Proc, mock_upstream: Proc) -> None:
    t = uuid.uuid4().hex
    before = metric(gateway.url, "sluicegate_streams_total", model="m", outcome="client_disconnected")
    dropped_at = await _stream_then_drop(f"{gateway.url}/v1/chat/completions",
                                         body(tag=t, tokens=10_000, interval=0.05), 3)
    record = await asyncio.to_thread(wait_for, lambda: (r := mock_request(mock_upstream.url, t)) and
                                     r["peer_closed_at"] and r, 5.0)
    assert record and record["state"] == "peer_closed"
    assert record["peer_closed_at"] - dropped_at < 1.0
    assert record["tokens_sent"] < 10_000
    assert await asyncio.to_thread(wait_for, lambda: metric(
        gateway.url, "sluicegate_streams_total", model="m", outcome="client_disconnected") == before + 1, 5.0)
    assert metric(gateway.url, "sluicegate_streams_in_flight", model="m") == 0
    assert metric(gateway.url, "sluicegate_upstream_in_flight") == 0


async def test_client_disconnect_while_waiting_for_first_chunk_closes_upstream(gateway: Proc,
                                                                              mock_upstream: Proc) -> None:
    t = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(f"{gateway.url}/v1/chat/completions",
                                                json=body(tag=t, first_delay=30)))
        assert await asyncio.to_thread(wait_for, lambda: mock_request(mock_upstream.url, t), 5.0)
        dropped_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    record = await asyncio.to_thread(wait_for, lambda: (r := mock_request(mock_upstream.url, t)) and
                                     r["peer_closed_at"] and r, 5.0)
    assert record and record["peer_closed_at"] - dropped_at < 1.0
    assert await asyncio.to_thread(wait_for, lambda: metric(gateway.url, "sluicegate_streams_in_flight",
                                                            model="m") == 0, 5.0)


async def test_heartbeats_during_upstream_silence_do_not_reset_idle_deadline(gateway: Proc) -> None:
    raw = b""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.post(
        f"{gateway.url}/v1/chat/completions", json=body(tokens=5, stall_after=2)
    ) as resp:
        assert resp.status == 200
        while chunk := await resp.content.readany():
            raw += chunk
    elapsed = time.monotonic() - started
    assert raw.count(b": ping\n\n") >= 3  # 200 ms heartbeats during the 1 s of silence
    events = SSEDecoder().feed(raw)
    assert '"code":"timeout_idle"' in events[-1].data.replace(" ", "")
    assert "[DONE]" not in raw.decode()
    assert 0.9 < elapsed < 5.0  # the idle deadline (1 s) fired although pings kept flowing


REPLAYED = [
    ("openai-chat/pydantic-ai-gpt4o-parallel-tool-calls-usage.sse", "chat/completions"),
    ("openai-chat/pydantic-ai-gpt5-moderation-after-usage.sse", "chat/completions"),
    ("openai-chat/envoy-gpt5nano-include-usage-length.sse", "chat/completions"),
    ("openai-chat/prism-gpt4-tool-call-newline-args.sse", "chat/completions"),
    ("openai-chat/envoy-search-preview-web-search.sse", "chat/completions"),
    ("openai-completions/envoy-legacy-completions-usage.sse", "completions"),
    ("openai-responses/prism-gpt4-basic-text.sse", "responses"),
    ("openai-responses/pydantic-ai-gpt5-reasoning-item-usage.sse", "responses"),
]


@pytest.fixture(scope="module")
def replay() -> Iterator[tuple[ReplayUpstream, Proc]]:
    upstream = ThreadedReplayUpstream(seed=42)
    url = upstream.start_sync()
    proc = start_gateway(one_model(url, retry={"attempts": 1}))
    yield upstream, proc
    proc.stop()
    upstream.stop_sync()


@pytest.mark.parametrize(("fixture", "endpoint"), REPLAYED)
async def test_pass_through_is_byte_exact_for_recorded_streams(
    replay: tuple[ReplayUpstream, Proc], fixture: str, endpoint: str
) -> None:
    upstream, proc = replay
    recorded = Path(FIXTURES, fixture).read_bytes()
    upstream.body = recorded
    payload = {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "messages": []}
    async with aiohttp.ClientSession() as session, session.post(
        f"{proc.url}/v1/{endpoint}", json=payload
    ) as resp:
        assert resp.status == 200
        received = await resp.read()
    assert received == recorded


async def test_gateway_added_usage_chunk_is_stripped_from_recorded_stream(replay: tuple[ReplayUpstream, Proc]) -> None:
    upstream, proc = replay
    recorded = Path(FIXTURES, "openai-chat/pydantic-ai-gpt4o-parallel-tool-calls-usage.sse").read_bytes()
    upstream.body = recorded
    payload = {"model": "m", "stream": True, "messages": []}  # the client did not ask for usage
    async with aiohttp.ClientSession() as session, session.post(f"{proc.url}/v1/chat/completions",
                                                                json=payload) as resp:
        received = await resp.read()
    want = [e for e in SSEDecoder().feed(recorded) if '"choices":[]' not in e.data]
    got = SSEDecoder().feed(received)
    assert got == want
    assert metric(proc.url, "sluicegate_tokens_total", kind="completion") > 0


@pytest.mark.parametrize(
    ("raw", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_json", None),
        (b"", 400, "invalid_request", None),
        (b'{"messages": []}', 400, "invalid_request", "model"),
        (b'{"model": 7}', 400, "invalid_request", "model"),
        (b'{"model": "m", "stream": "yes"}', 400, "invalid_request", "stream"),
        (b'{"model": "m", "pad": "' + b"x" * 5000 + b'"}', 413, "request_too_large", None),
        (b'{"model": "unknown-model"}', 404, "model_not_found", "model"),
    ],
)
async def test_bad_requests_get_openai_shaped_errors(gateway: Proc, raw: bytes, status: int, code: str,
                                                     param: str | None) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        f"{gateway.url}/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == status
        payload = await resp.json()
        assert resp.headers["x-request-id"]
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]


async def test_models_healthz_metrics(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/v1/models") as resp:
            assert (await resp.json())["data"][0]["id"] == "m"
        async with session.get(f"{gateway.url}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{gateway.url}/metrics") as resp:
            text = await resp.text()
    for name in ("sluicegate_requests_total", "sluicegate_streams_in_flight", "sluicegate_time_to_first_token_seconds",
                 "sluicegate_inter_token_latency_seconds", "sluicegate_event_loop_lag_seconds"):
        assert name in text


async def test_metrics_false_stops_the_per_request_metrics_only(mock_upstream: Proc) -> None:
    """server.metrics: false (docs/metrics.md): nothing recorded when a request ends, rejected requests included;
    the gauges and the other metrics go on."""
    proc = start_gateway(one_model(f"{mock_upstream.url}/v1", server={"metrics": False}))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{proc.url}/v1/chat/completions", json=body(tokens=3)) as resp:
                assert resp.status == 200 and b"[DONE]" in await resp.read()
            async with session.post(f"{proc.url}/v1/chat/completions", json={"model": "nope"}) as resp:
                assert resp.status == 404
            async with session.post(f"{proc.url}/v1/chat/completions", data=b"{bad") as resp:
                assert resp.status == 400
        per_request = ("sluicegate_requests_total", "sluicegate_streams_total", "sluicegate_tokens_total",
                       "sluicegate_time_to_first_token_seconds_count", "sluicegate_inter_token_latency_seconds_count")
        assert all(metric(proc.url, name) == 0 for name in per_request)
        assert metric(proc.url, "sluicegate_upstream_in_flight") == 0
        assert metric(proc.url, "sluicegate_upstream_requests_total", result="ok") == 1  # the others go on
    finally:
        proc.stop()


async def test_oversized_event_mid_stream_ends_in_an_error_event_and_nothing_of_it_or_after_it_is_sent() -> None:
    # The oversized event and the event after it arrive in one write, which the gateway takes in 1 KiB reads that
    # wait in its relay queue together: once a read has failed the stream, the later reads (which complete the
    # oversized event and carry the next one) must not be relayed.
    first = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    oversized = b'data: {"pad":"' + b"x" * 2400 + b'"}\n\n'
    after = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"late"}}]}\n\n'

    async def serve(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(first)
        await asyncio.sleep(0.3)  # the gateway commits the first event and hands the stream to its pump
        await response.write(oversized + after)
        await asyncio.sleep(0.3)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    proc = start_gateway(one_model(f"http://127.0.0.1:{port}/v1",
                                   server={"max_event_bytes": 1024, "upstream_read_buffer": 1024}))
    try:
        async with aiohttp.ClientSession() as session, session.post(
                f"{proc.url}/v1/chat/completions", json={"model": "m", "stream": True}) as resp:
            assert resp.status == 200
            received = await resp.read()
        events = [e.data for e in SSEDecoder().feed(received)]
        assert events[0] == first[6:-2].decode()
        assert len(events) == 2, events  # the first event, then the error event: nothing of the oversized one
        assert "larger than 1024 bytes" in events[1] and '"error"' in events[1]
        assert b"xxxx" not in received and b"late" not in received and b"[DONE]" not in received
        assert wait_for(lambda: metric(proc.url, "sluicegate_streams_in_flight") == 0, timeout=5)
        assert metric(proc.url, "sluicegate_upstream_in_flight") == 0
    finally:
        proc.stop()
        await runner.cleanup()


async def test_non_streaming_response_larger_than_max_event_bytes_is_a_clean_502(mock_upstream: Proc) -> None:
    proc = start_gateway(one_model(f"{mock_upstream.url}/v1", server={"max_event_bytes": 2048}))
    try:
        async with aiohttp.ClientSession() as session:
            small = {**body(tokens=3), "stream": False}
            async with session.post(f"{proc.url}/v1/chat/completions", json=small) as resp:
                assert resp.status == 200 and (await resp.json())["choices"]
            big = {**body(tokens=400, tag=f"big-{uuid.uuid4()}"), "stream": False}
            async with session.post(f"{proc.url}/v1/chat/completions", json=big) as resp:
                assert resp.status == 502
                error = (await resp.json())["error"]
            assert error["code"] == "upstream_response_too_large" and "server.max_event_bytes" in error["message"]
            assert resp.headers["x-sluicegate-attempts"] == "1"  # the same request would get the same answer
            async with session.post(f"{proc.url}/v1/chat/completions", json=small) as resp:
                assert resp.status == 200  # the worker and its slots are fine afterwards
        assert metric(proc.url, "sluicegate_upstream_in_flight") == 0
    finally:
        proc.stop()


@pytest.mark.parametrize("stream", [True, False])
async def test_upstream_that_does_not_speak_http_is_a_clean_502(stream: bool) -> None:
    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(not_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proc = start_gateway(one_model(f"http://127.0.0.1:{port}/v1", retry={"attempts": 1}))
    try:
        async with aiohttp.ClientSession() as session, session.post(
            f"{proc.url}/v1/chat/completions", json={**body(tokens=3), "stream": stream}
        ) as resp:
            assert resp.status == 502
            error = (await resp.json())["error"]
        assert error["code"] == "upstream_connect_error" and error["type"] == "upstream_error"
        gauges = ("sluicegate_upstream_in_flight", "sluicegate_streams_in_flight")
        assert await asyncio.to_thread(wait_for, lambda: all(metric(proc.url, g) == 0 for g in gauges), 5.0)
    finally:
        proc.stop()
        server.close()
