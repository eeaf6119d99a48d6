"""Every stall has a deadline: connect, first chunk, idle, total, write stall, non-stream request. Each outcome is
distinct in metrics and in what the client sees, the upstream is closed, and the in-flight gauges return to zero."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from sluicegate.wire.sse import SSEDecoder
from tests.support.http import metric, mock_request, wait_for
from tests.support.procs import Proc, one_model, start_gateway

TIMEOUTS = {"connect": "300ms", "first_chunk": "500ms", "idle": "500ms", "total": "2s", "write_stall": "500ms",
            "request": "700ms"}


@pytest.fixture(scope="module")
def gateway(mock_upstream: Proc) -> Iterator[Proc]:
    config = one_model(f"{mock_upstream.url}/v1", retry={"attempts": 1}, timeouts=TIMEOUTS,
                       heartbeat_interval=0)
    proc = start_gateway(config)
    yield proc
    proc.stop()


def body(stream: bool = True, **mock: object) -> dict[str, object]:
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}], "mock": mock}


async def post(url: str, payload: dict[str, object]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/v1/chat/completions", json=payload) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def outcome_count(gateway: Proc, outcome: str) -> float:
    return metric(gateway.url, "sluicegate_streams_total", model="m", outcome=outcome)


async def settled(gateway: Proc) -> None:
    """In-flight gauges back at zero (generous bound: the check itself is over real HTTP)."""
    def zero() -> bool:
        return (metric(gateway.url, "sluicegate_streams_in_flight") == 0
                and metric(gateway.url, "sluicegate_upstream_in_flight") == 0)
    assert await asyncio.to_thread(wait_for, zero, 5.0)


async def test_first_chunk_deadline_before_headers_is_504(gateway: Proc, mock_upstream: Proc) -> None:
    t = uuid.uuid4().hex
    before = outcome_count(gateway, "timeout_first_chunk")
    started = time.monotonic()
    status, _headers, raw = await post(gateway.url, body(tag=t, headers_delay=5))
    assert status == 504
    assert b'"code":"timeout_first_chunk"' in raw
    assert 0.4 < time.monotonic() - started < 3
    assert outcome_count(gateway, "timeout_first_chunk") == before + 1
    record = await asyncio.to_thread(wait_for, lambda: (r := mock_request(mock_upstream.url, t)) and
                                     r["peer_closed_at"] and r, 5.0)
    assert record, "the upstream request must be closed"
    await settled(gateway)


async def test_headers_then_nothing_is_still_a_first_chunk_timeout(gateway: Proc) -> None:
    status, _, raw = await post(gateway.url, body(stall_after=0))
    assert status == 504
    assert b"timeout_first_chunk" in raw
    await settled(gateway)


async def test_idle_deadline_after_first_byte_is_an_error_event(gateway: Proc, mock_upstream: Proc) -> None:
    t = uuid.uuid4().hex
    before = outcome_count(gateway, "timeout_idle")
    status, _, raw = await post(gateway.url, body(tag=t, tokens=10, stall_after=3))
    assert status == 200
    events = SSEDecoder().feed(raw)
    assert '"timeout_idle"' in events[-1].data and '"error"' in events[-1].data
    assert b"[DONE]" not in raw
    assert outcome_count(gateway, "timeout_idle") == before + 1
    assert await asyncio.to_thread(wait_for, lambda: (mock_request(mock_upstream.url, t) or {}).get(
        "peer_closed_at"), 5.0)
    await settled(gateway)


async def test_total_deadline_cuts_a_long_stream(gateway: Proc) -> None:
    before = outcome_count(gateway, "timeout_total")
    started = time.monotonic()
    status, _, raw = await post(gateway.url, body(tokens=1000, interval=0.05))
    elapsed = time.monotonic() - started
    assert status == 200
    assert b'"timeout_total"' in raw
    assert 1.8 < elapsed < 5
    assert outcome_count(gateway, "timeout_total") == before + 1
    await settled(gateway)


async def test_non_stream_request_deadline(gateway: Proc) -> None:
    status, _, raw = await post(gateway.url, body(stream=False, first_delay=5))
    assert status == 504
    assert b'"timeout_request"' in raw
    await settled(gateway)


async def test_connect_deadline() -> None:
    # A listener whose accept queue is full drops new SYNs, so connecting hangs (on loopback, deterministically).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    await asyncio.sleep(0.2)
    proc = start_gateway(one_model(f"http://127.0.0.1:{port}/v1", retry={"attempts": 1}, timeouts=TIMEOUTS))
    try:
        started = time.monotonic()
        status, _, raw = await post(proc.url, body())
        assert status == 504, raw
        assert b'"timeout_connect"' in raw
        assert time.monotonic() - started < 3
        assert metric(proc.url, "sluicegate_streams_total", outcome="timeout_connect") == 1
        await settled(proc)
    finally:
        proc.stop()
        for s in fillers:
            s.close()
        listener.close()


async def test_write_stall_closes_stream_and_upstream(gateway: Proc, mock_upstream: Proc) -> None:
    """A client that stops reading is cut off after write_stall; its upstream is closed too."""
    t = uuid.uuid4().hex
    before = outcome_count(gateway, "write_stall")
    reader, writer = await asyncio.open_connection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]))
    import json

    payload = json.dumps(body(tag=t, tokens=300_000, token_bytes=100)).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    await writer.drain()
    await reader.read(1000)  # headers and a first event, then read nothing more
    assert await asyncio.to_thread(wait_for, lambda: outcome_count(gateway, "write_stall") == before + 1, 10.0)
    record = await asyncio.to_thread(wait_for, lambda: (r := mock_request(mock_upstream.url, t)) and
                                     r["peer_closed_at"] and r, 5.0)
    assert record and record["tokens_sent"] < 300_000 // 2  # the upstream was blocked, then closed
    writer.close()
    await settled(gateway)


async def test_per_deployment_timeout_override(mock_upstream: Proc) -> None:
    config = one_model(f"{mock_upstream.url}/v1", retry={"attempts": 1}, timeouts={"first_chunk": "5s"},
                       deployment={"timeouts": {"first_chunk": "300ms"}})
    proc = start_gateway(config)
    try:
        started = time.monotonic()
        status, _, raw = await post(proc.url, body(first_delay=3))
        assert status == 504 and b"timeout_first_chunk" in raw
        assert time.monotonic() - started < 2
    finally:
        proc.stop()


async def test_heartbeat_before_first_chunk_commits_and_keeps_connection_alive(mock_upstream: Proc) -> None:
    config = one_model(f"{mock_upstream.url}/v1", retry={"attempts": 1}, heartbeat_interval="200ms",
                       heartbeat_before_first_chunk=True)
    proc = start_gateway(config)
    try:
        status, _, raw = await post(proc.url, body(first_delay=1.0, tokens=3))
        assert status == 200
        head, _, rest = raw.partition(b"data: ")
        assert head.count(b": ping\n\n") >= 3  # pings went out during the 1 s of prefill
        assert rest and raw.rstrip().endswith(b"data: [DONE]")
    finally:
        proc.stop()


async def test_failure_after_pre_first_chunk_heartbeats_is_an_error_event(mock_upstream: Proc) -> None:
    """Pings committed the response (200): a later first-chunk timeout must still reach the client, as an event."""
    config = one_model(f"{mock_upstream.url}/v1", retry={"attempts": 1}, heartbeat_interval="200ms",
                       heartbeat_before_first_chunk=True, timeouts={"first_chunk": "800ms"})
    proc = start_gateway(config)
    try:
        status, _, raw = await post(proc.url, body(first_delay=5))
        assert status == 200
        assert raw.count(b": ping\n\n") >= 2
        events = SSEDecoder().feed(raw)
        assert len(events) == 1 and '"timeout_first_chunk"' in events[0].data and '"error"' in events[0].data
        assert b"[DONE]" not in raw
        assert metric(proc.url, "sluicegate_streams_total", outcome="timeout_first_chunk") == 1
    finally:
        proc.stop()
