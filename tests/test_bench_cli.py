"""`sluicegate bench` against a tiny local SSE server: counts, percentiles, JSON, error kinds, limits."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sluicegate.bench.cli import EXIT_UNREACHABLE, main
from sluicegate.bench.sse import SSEParser
from sluicegate.bench.stats import percentile
from tests.support.threaded_app import ThreadedApp
from tests.support.tls import server_tls, trusting


def _chat_chunk(text: str) -> bytes:
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _completion_chunk(text: str) -> bytes:
    return b"data: " + json.dumps({"id": "c1", "choices": [{"index": 0, "text": text}]}).encode() + b"\n\n"


def _responses_event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


class StreamServer:
    """An aiohttp server in a background thread; the first path segment picks the behaviour."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.received: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.peers: set[tuple[str, int]] = set()  # client address of every request: one per connection used
        self._tls = tls
        self._flaky = 0
        app = web.Application()
        app.router.add_post("/{scenario}/v1/{route:.*}", self._handle)
        self._app = ThreadedApp(app, tls)
        self.port = self._app.port

    def url(self, scenario: str) -> str:
        if self._tls is not None:
            return f"https://localhost:{self.port}/{scenario}/v1"  # the name the test certificate is for
        return f"http://127.0.0.1:{self.port}/{scenario}/v1"

    def close(self) -> None:
        self._app.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        scenario, route = request.match_info["scenario"], request.match_info["route"]
        body = await request.json()
        self.received.append((scenario, body, dict(request.headers)))
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername")[:2])
        mock = body.get("mock", {})
        tokens, interval, first_delay = (
            mock.get("tokens", 5),
            mock.get("interval", 0.0),
            mock.get("first_delay", 0),
        )
        if scenario == "s503" or (scenario == "flaky" and self._next_flaky()):
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=503)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(first_delay)
        if scenario == "hang":
            await resp.write(_chat_chunk("a"))
            await asyncio.sleep(5)
            return resp
        if scenario in ("reset", "error_data", "error_event", "incomplete"):
            tokens = 2
        for i in range(tokens):
            if i:
                await asyncio.sleep(interval)
            if route == "responses":
                await resp.write(_responses_event("response.output_text.delta", delta=f"t{i} "))
            elif route == "completions":
                await resp.write(_completion_chunk(f"t{i} "))
            else:
                await resp.write(_chat_chunk(f"t{i} "))
        if scenario == "reset":
            assert request.transport is not None
            request.transport.abort()
            return resp
        if scenario == "error_data":
            await resp.write(b'data: {"error": {"message": "upstream died", "type": "server_error"}}\n\n')
        elif scenario == "error_event":
            await resp.write(b'event: error\ndata: {"message": "upstream died"}\n\n')
        elif scenario == "incomplete":
            pass
        elif route == "responses":
            usage = {"input_tokens": 3, "output_tokens": tokens}
            await resp.write(_responses_event("response.completed", response={"usage": usage}))
        else:
            if body.get("stream_options", {}).get("include_usage"):
                usage = {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3}
                await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _next_flaky(self) -> bool:
        self._flaky += 1
        return self._flaky % 2 == 0


@pytest.fixture(scope="module")
def server() -> Iterator[StreamServer]:
    srv = StreamServer()
    yield srv
    srv.close()


def bench_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one line, got: {out!r}"
    return code, json.loads(lines[0])


MOCK_5_FAST = '{"mock": {"tokens": 5, "interval": 0.02, "first_delay": 0.05}}'


def test_sse_parser_is_split_invariant() -> None:
    stream = (
        b"\xef\xbb\xbf: comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\n"
        b'data: {"x": 1}\n\nid: 7\nretry: 5\n\n\rdata: cr\r\rdata: last\n\n'
    )
    expected = [(b"a", b"one\ntwo"), (b"", b'{"x": 1}'), (b"", b"cr"), (b"", b"last")]
    assert SSEParser().feed(stream) == expected
    for cut in range(1, len(stream)):
        parser = SSEParser()
        assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) == expected, cut
    parser = SSEParser()
    assert [e for i in range(len(stream)) for e in parser.feed(stream[i : i + 1])] == expected
    assert SSEParser().feed(b"data: unterminated\n") == []


def test_percentile_is_linear_interpolation() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(4.6)
    assert percentile(values, 100) == 5.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_chat_counts_timings_and_json_shape(server: StreamServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.received.clear()
    code, data = bench_json(
        capsys,
        *("--url", server.url("ok"), "--model", "m1", "-c", "4", "-n", "12", "--label", "run-a"),
        *("--max-tokens", "9", "--api-key", "sk-test", "--extra-body", MOCK_5_FAST),
    )
    assert code == 0
    assert set(data) >= {"ttft_s", "itl_s", "tokens_per_s", "requests", "errors", "cpu", "wall_s", "tokens"}
    assert data["label"] == "run-a"
    assert data["requests"] == {"ok": 12, "failed": 0, "cancelled": 0, "not_started": 0}
    assert data["errors"] == {}
    assert data["tokens"] == {"content_events": 60, "usage_completion_tokens": 60, "usage_reports": 12}
    ttft, itl = data["ttft_s"], data["itl_s"]
    assert ttft["n"] == 12 and itl["n"] == 12 * 4
    assert ttft["p50"] <= ttft["p90"] <= ttft["p99"] <= ttft["max"]
    assert itl["p50"] <= itl["p99"] <= itl["max"]
    assert 0.04 <= ttft["p50"] < 2.0  # the server waits 50 ms before the first token
    assert 0.01 <= itl["p50"] < 0.5  # and 20 ms between tokens
    assert data["tokens_per_s"] == pytest.approx(60 / data["wall_s"])
    _, body, headers = server.received[0]
    assert body["mock"] == {"tokens": 5, "interval": 0.02, "first_delay": 0.05}
    assert body["max_tokens"] == 9 and body["stream"] is True and body["model"] == "m1"
    assert body["messages"][0]["content"] and body["stream_options"] == {"include_usage": True}
    assert headers["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("endpoint", ["completions", "responses"])
def test_other_endpoints(server: StreamServer, capsys: pytest.CaptureFixture[str], endpoint: str) -> None:
    server.received.clear()
    code, data = bench_json(
        capsys,
        *("--url", server.url("ok") + "/", "--model", "m", "-c", "2", "-n", "4", "--endpoint", endpoint),
        *("--max-tokens", "5", "--extra-body", '{"mock": {"tokens": 3}}'),
    )
    assert code == 0 and data["endpoint"] == endpoint
    assert data["requests"]["ok"] == 4
    assert data["tokens"] == {"content_events": 12, "usage_completion_tokens": 12, "usage_reports": 4}
    body = server.received[0][1]
    if endpoint == "responses":
        assert body["input"] and body["max_output_tokens"] == 5 and "stream_options" not in body
    else:
        assert body["prompt"] and body["max_tokens"] == 5


@pytest.mark.parametrize(
    ("scenario", "kind", "extra_args"),
    [
        ("s503", "http_503", ()),
        ("reset", "reset", ()),
        ("error_data", "stream_error", ()),
        ("error_event", "stream_error", ()),
        ("incomplete", "incomplete", ()),
        ("hang", "timeout", ("--timeout", "0.5")),
    ],
)
def test_error_kinds(
    server: StreamServer,
    capsys: pytest.CaptureFixture[str],
    scenario: str,
    kind: str,
    extra_args: tuple[str, ...],
) -> None:
    code, data = bench_json(capsys, "--url", server.url(scenario), "--model", "m", "-c", "3", "-n", "3", *extra_args)
    assert code == 0  # request errors are reported, never fatal
    assert data["errors"] == {kind: 3}
    assert data["requests"] == {"ok": 0, "failed": 3, "cancelled": 0, "not_started": 0}
    assert data["ttft_s"]["n"] == 0 and data["ttft_s"]["p50"] is None
    if scenario in ("reset", "error_data", "error_event", "incomplete"):
        assert data["tokens"]["content_events"] == 6  # what arrived before the failure still counts


def test_mixed_outcomes_add_up(server: StreamServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = bench_json(capsys, "--url", server.url("flaky"), "--model", "m", "-c", "2", "-n", "10")
    assert code == 0
    assert data["requests"]["ok"] + data["requests"]["failed"] == 10
    assert data["requests"]["failed"] == data["errors"]["http_503"] >= 3
    assert data["tokens"]["content_events"] == 5 * data["requests"]["ok"]


def test_warmup_is_not_counted(server: StreamServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.received.clear()
    code, data = bench_json(capsys, "--url", server.url("ok"), "--model", "m", "-c", "2", "-n", "4", "--warmup", "3")
    assert code == 0 and data["warmup"] == 3
    assert len(server.received) == 7
    assert data["requests"]["ok"] == 4 and data["tokens"]["content_events"] == 20


def test_ramp_spreads_the_first_requests(server: StreamServer, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--url", server.url("ok"), "--model", "m", "-c", "4", "-n", "4")
    code, burst = bench_json(capsys, *args)
    assert code == 0 and burst["ramp_s"] == 0
    code, ramped = bench_json(capsys, *args, "--ramp", "1.2")
    assert code == 0 and ramped["ramp_s"] == 1.2 and ramped["requests"]["ok"] == 4
    # Worker i starts at 1.2 * i / 4 s: the last at 0.9 s, so the run cannot be shorter than that.
    assert ramped["wall_s"] >= 0.85 and burst["wall_s"] < 0.85


def test_max_seconds_stops_the_run(server: StreamServer, capsys: pytest.CaptureFixture[str]) -> None:
    slow = '{"mock": {"tokens": 100, "interval": 0.05}}'  # 5 s per request
    started = time.monotonic()
    code, data = bench_json(
        capsys,
        *("--url", server.url("ok"), "--model", "m", "-c", "2", "-n", "10"),
        *("--max-seconds", "1", "--extra-body", slow),
    )
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 4.0
    assert data["stopped_by_max_seconds"] is True
    assert data["requests"] == {"ok": 0, "failed": 0, "cancelled": 2, "not_started": 8}
    assert 0.8 <= data["wall_s"] < 3.0
    assert data["tokens"]["content_events"] > 0  # partial streams count toward throughput


def test_cpu_pid_reports_a_real_process(server: StreamServer, capsys: pytest.CaptureFixture[str]) -> None:
    spin = "import time\nend = time.monotonic() + 8\nwhile time.monotonic() < end: pass\n"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.1)
        code, data = bench_json(
            capsys,
            *("--url", server.url("ok"), "--model", "m", "-c", "2", "-n", "4"),
            *("--extra-body", '{"mock": {"tokens": 10, "interval": 0.05}}'),
            *("--cpu-pid", str(busy.pid), "--cpu-pid", str(os.getpid())),
        )
    finally:
        busy.kill()
        busy.wait()
    assert code == 0
    spinner = data["cpu"][str(busy.pid)]
    assert spinner["cpu_s"] > 0.05  # it spun for the whole ~1 s run
    assert spinner["us_per_token"] == pytest.approx(spinner["cpu_s"] * 1e6 / 40)
    assert data["cpu"][str(os.getpid())]["cpu_s"] >= 0.0


def test_unreachable_url_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, data = bench_json(capsys, "--url", f"http://127.0.0.1:{port}/v1", "--model", "m", "-c", "4", "-n", "50")
    assert code == EXIT_UNREACHABLE
    assert data["unreachable"] is True
    assert data["errors"].get("connect", 0) >= 1
    assert data["requests"]["ok"] == 0 and data["requests"]["not_started"] > 0


@pytest.mark.parametrize(
    "bad",
    [
        ("--extra-body", "[1]"),
        ("--extra-body", "{nope"),
        ("--concurrency", "0"),
        ("--cpu-pid", "999999999"),
        ("--endpoint", "embeddings"),
        ("--url", "http:///v1"),
        ("--url", "http://127.0.0.1:99999/v1"),
        ("--url", "127.0.0.1:4000/v1"),
    ],
)
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], bad: tuple[str, str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--url", "http://127.0.0.1:1/v1", "--model", "m", *bad])
    assert exc.value.code == 2
    capsys.readouterr()


def test_connections_are_kept_alive() -> None:
    """Requests reuse connections, as a real client would: after a whole stream, and after a non-200 answer whose
    body was read to its end."""
    srv = StreamServer()
    try:
        assert main(["--url", srv.url("ok"), "--model", "m", "-c", "2", "-n", "8", "--json"]) == 0
        assert len(srv.received) == 8 and len(srv.peers) <= 2
        srv.peers.clear()
        assert main(["--url", srv.url("s503"), "--model", "m", "-c", "1", "-n", "3", "--json"]) == 0
        assert len(srv.peers) == 1
    finally:
        srv.close()


def test_https_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """TLS with certificate checks: a certificate the client trusts streams; one it does not is a connect error
    (and, with no answer at all, the run stops as unreachable)."""
    context, cert = server_tls(tmp_path)
    srv = StreamServer(tls=context)
    try:
        with trusting(cert):
            code, data = bench_json(capsys, "--url", srv.url("ok"), "--model", "m", "-c", "2", "-n", "4")
        assert code == 0 and data["requests"]["ok"] == 4 and data["tokens"]["content_events"] == 20
        code, data = bench_json(capsys, "--url", srv.url("ok"), "--model", "m", "-c", "2", "-n", "4")
        assert code == EXIT_UNREACHABLE and data["errors"].get("connect", 0) >= 1 and data["requests"]["ok"] == 0
    finally:
        srv.close()


def test_table_output(server: StreamServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--url", server.url("ok"), "--model", "m", "-c", "2", "-n", "2", "--label", "table-run"])
    captured = capsys.readouterr()
    assert code == 0
    assert "table-run" in captured.out and "TTFT ms" in captured.out and "tokens/s" in captured.out
    assert "{" not in captured.out  # the table, not JSON
