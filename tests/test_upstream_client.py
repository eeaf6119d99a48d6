"""The upstream HTTP/1.1 client against scripted servers on real 127.0.0.1 sockets: keep-alive reuse, an idle
connection the upstream closed, every way a body can end (chunked, Content-Length, connection close), broken and
malformed responses, connect failures and deadlines, TLS, the relay's sink and its flow control."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from sluicegate.upstream.client import UpstreamClient, parse_target, request_bytes
from sluicegate.upstream.connection import UpstreamConnection
from sluicegate.upstream.errors import (
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
)
from tests.support.tls import server_tls, trusting

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class ScriptedServer:
    """Accepts connections, reads one request at a time and answers it with `script(reader, writer, n)`, where n
    counts requests across connections. `connections` counts accepted connections; `requests` keeps the raw
    requests."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://{'localhost' if self.tls else '127.0.0.1'}:{port}" \
                   "/v1/chat/completions"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()  # as a server shutting down does: the client's idle connections see it

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append(head + await reader.readexactly(length))
                await self.script(reader, writer, len(self.requests))
                if writer.is_closing():
                    return
        writer.close()


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def answer_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(HEAD_CHUNKED + chunked(b"data: %d\n\n" % n, b"data: [DONE]\n\n"))
    await writer.drain()


async def post(client: UpstreamClient, url: str, connect_timeout: float = 5.0) -> tuple[int, bytes, bool]:
    conn = await client.post(url, {"Content-Type": "application/json"}, b'{"x":1}', connect_timeout=connect_timeout)
    status = conn.status
    body = await asyncio.wait_for(conn.read_all(), 5)
    reusable = conn.reusable
    client.release(conn, reuse=True)
    return status, body, reusable


async def case_request_is_framed_by_the_client_and_keeps_signed_paths(client: UpstreamClient, tmp_path: Path) -> None:
    async with ScriptedServer(answer_chunked) as server:
        url = server.url + "?a=%2F&b=1"
        await post(client, url)
    head = server.requests[0]
    assert head.startswith(b"POST /v1/chat/completions?a=%2F&b=1 HTTP/1.1\r\n")
    assert f"Host: {url.split('/')[2]}\r\n".encode() in head
    assert b"Content-Length: 7\r\n" in head and head.endswith(b'\r\n\r\n{"x":1}')


async def case_keep_alive_connection_is_reused(client: UpstreamClient, tmp_path: Path) -> None:
    async with ScriptedServer(answer_chunked) as server:
        for n in range(1, 6):
            status, body, reusable = await post(client, server.url)
            assert (status, body, reusable) == (200, b"data: %d\n\ndata: [DONE]\n\n" % n, True)
    assert server.connections == 1


async def case_idle_connection_closed_by_the_upstream_is_replaced(client: UpstreamClient, tmp_path: Path) -> None:
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await answer_chunked(reader, writer, n)
        writer.close()  # as an upstream whose keep-alive timeout ends does, without saying so in the response

    async with ScriptedServer(answer_then_close) as server:
        assert (await post(client, server.url))[0] == 200
        await asyncio.sleep(0.05)  # the close may or may not have reached the client yet; both must work
        assert (await post(client, server.url))[1] == b"data: 2\n\ndata: [DONE]\n\n"
        assert (await post(client, server.url))[1] == b"data: 3\n\ndata: [DONE]\n\n"
    assert server.connections == 3


async def case_interim_responses_are_skipped(client: UpstreamClient, tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        await answer_chunked(reader, writer, n)

    async with ScriptedServer(answer) as server:
        assert await post(client, server.url) == (200, b"data: 1\n\ndata: [DONE]\n\n", True)
        assert (await post(client, server.url))[1] == b"data: 2\n\ndata: [DONE]\n\n"
    assert server.connections == 1


async def case_closed_idle_connections_are_forgotten(client: UpstreamClient, tmp_path: Path) -> None:
    async with ScriptedServer(answer_chunked) as server:
        await post(client, server.url)
        assert sum(len(idle) for idle in client._idle.values()) == 1
    # The server is gone: it closed the idle connection; nothing is kept for it any more.
    for _ in range(100):
        if not client._idle and not client._open:
            break
        await asyncio.sleep(0.02)
    assert client._idle == {} and client._open == set()


async def case_idle_timeout_closes_and_forgets(client: UpstreamClient, tmp_path: Path) -> None:
    short = UpstreamClient(read_size=4096, socket_buffer=0, idle_timeout=0.1)
    try:
        async with ScriptedServer(answer_chunked) as server:
            await post(short, server.url)
            await asyncio.sleep(0.4)
            assert short._idle == {} and short._open == set()
            await post(short, server.url)  # a new connection
        assert server.connections == 2
    finally:
        short.close()


async def case_content_length_body(client: UpstreamClient, tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b'{"ok":true}')

    async with ScriptedServer(answer) as server:
        assert await post(client, server.url) == (200, b'{"ok":true}', True)
        assert await post(client, server.url) == (200, b'{"ok":true}', True)
    assert server.connections == 1


async def case_body_delimited_by_connection_close(client: UpstreamClient, tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"data: [DONE]\n\n")
        writer.close()

    async with ScriptedServer(answer) as server:
        assert await post(client, server.url) == (200, b"data: 1\n\ndata: [DONE]\n\n", False)


async def case_error_status_and_headers_are_readable(client: UpstreamClient, tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        body = b'{"error":{"message":"slow down"}}' + b" " * 1_000_000  # more than one read
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: %d\r\n\r\n%b"
                     % (len(body), body))
        await writer.drain()

    async with ScriptedServer(answer) as server:
        conn = await client.post(server.url, {}, b"{}", connect_timeout=5)
        assert conn.status == 429 and conn.headers["retry-after"] == "3"
        assert await conn.read_all(limit=8) == b'{"error"'
        client.release(conn, reuse=True)  # not read to its end: closed, not pooled
        assert conn.closed


async def case_connection_reset_mid_body_is_an_error(client: UpstreamClient, tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(HEAD_CHUNKED + b"9\r\ndata: 1\n\n\r\n")
        await writer.drain()
        writer.transport.abort()

    async with ScriptedServer(answer) as server:
        conn = await client.post(server.url, {}, b"{}", connect_timeout=5)
        assert await conn.read() == b"data: 1\n\n"
        with pytest.raises(UpstreamClosed) as info:
            await asyncio.wait_for(conn.read(), 5)
        assert not info.value.before_response
        client.release(conn, reuse=True)
        assert conn.closed


async def case_close_before_any_response_on_a_new_connection(client: UpstreamClient, tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.transport.abort()

    async with ScriptedServer(answer) as server:
        with pytest.raises(UpstreamClosed) as info:
            await post(client, server.url)
        assert info.value.before_response
    assert server.connections == 1  # a new connection that failed is not retried here (the retry layer decides)


async def case_malformed_response_is_a_protocol_error(client: UpstreamClient, tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    async with ScriptedServer(answer) as server:
        with pytest.raises(UpstreamProtocolError):
            await post(client, server.url)


async def case_connect_refused(client: UpstreamClient, tmp_path: Path) -> None:
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(UpstreamConnectError):
        await post(client, f"http://127.0.0.1:{port}/v1/x")


async def case_hostnames_are_resolved(client: UpstreamClient, tmp_path: Path) -> None:
    async with ScriptedServer(answer_chunked) as server:
        assert (await post(client, server.url.replace("127.0.0.1", "localhost")))[0] == 200


async def case_tls_handshake_counts_against_the_connect_deadline(client: UpstreamClient, tmp_path: Path) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)  # accepts TCP, never speaks TLS
    port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamConnectTimeout):
            await post(client, f"https://127.0.0.1:{port}/v1/x", connect_timeout=0.3)
        assert loop.time() - started < 3
    finally:
        server.close()


async def case_tls_certificate_is_verified(client: UpstreamClient, tmp_path: Path) -> None:
    context, _ = server_tls(tmp_path)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read(1)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await post(client, f"https://localhost:{port}/v1/x")
    finally:
        server.close()


async def case_tls_with_a_private_ca_named_in_ssl_cert_file(client: UpstreamClient, tmp_path: Path) -> None:
    context, cert = server_tls(tmp_path)
    with trusting(cert):
        async with ScriptedServer(answer_chunked, tls=context) as server:
            assert await post(client, server.url) == (200, b"data: 1\n\ndata: [DONE]\n\n", True)
            assert (await post(client, server.url))[0] == 200
        assert server.connections == 1  # kept alive over TLS too


class RecordingSink:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended = asyncio.Event()
        self.error: UpstreamError | None = None

    def body(self, data: bytes) -> None:
        self.data.append(data)

    def end(self) -> None:
        self.ended.set()

    def lost(self, exc: UpstreamError) -> None:
        self.error = exc
        self.ended.set()


async def case_sink_gets_every_read_and_pausing_stops_reading(client: UpstreamClient, tmp_path: Path) -> None:
    release = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(HEAD_CHUNKED + b"9\r\ndata: 1\n\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"9\r\ndata: 2\n\n\r\n" + b"0\r\n\r\n")
        await writer.drain()

    async with ScriptedServer(answer) as server:
        conn = await client.post(server.url, {}, b"{}", connect_timeout=5)
        first = await conn.read()  # the coroutine phase, as an attempt reads its first event
        sink = RecordingSink()
        conn.set_sink(sink)
        conn.pause_reading()
        release.set()
        await asyncio.sleep(0.2)
        assert sink.data == [] and not sink.ended.is_set()  # paused: nothing read meanwhile
        conn.resume_reading()
        await asyncio.wait_for(sink.ended.wait(), 5)
        assert first + b"".join(sink.data) == b"data: 1\n\ndata: 2\n\n" and sink.error is None
        assert conn.reusable


class PausingSink(RecordingSink):
    """Pauses reading on every read, as the relay does when the client is not draining or too many reads are queued."""

    def __init__(self, conn: UpstreamConnection) -> None:
        super().__init__()
        self.conn = conn

    def body(self, data: bytes) -> None:
        super().body(data)
        self.conn.pause_reading()


async def case_connection_paused_by_its_last_read_is_reusable(client: UpstreamClient, tmp_path: Path) -> None:
    async with ScriptedServer(answer_chunked) as server:
        conn = await client.post(server.url, {}, b"{}", connect_timeout=5)
        sink = PausingSink(conn)
        conn.set_sink(sink)  # the whole response came in one read: paused by it, and complete
        await asyncio.wait_for(sink.ended.wait(), 5)
        client.release(conn, reuse=True)
        status, body, _ = await post(client, server.url)  # the same connection: it must read again
        assert (status, body) == (200, b"data: 2\n\ndata: [DONE]\n\n")
    assert server.connections == 1


async def case_sink_is_told_when_the_connection_breaks(client: UpstreamClient, tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(HEAD_CHUNKED + b"9\r\ndata: 1\n\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async with ScriptedServer(answer) as server:
        conn = await client.post(server.url, {}, b"{}", connect_timeout=5)
        sink = RecordingSink()
        conn.set_sink(sink)
        await asyncio.wait_for(sink.ended.wait(), 5)
        assert isinstance(sink.error, UpstreamClosed)


class LoopbackProxy:
    """An HTTP proxy on loopback: CONNECT opens a tunnel to the named host and port; any other request is piped to
    the host its absolute-form URL names. `heads` keeps the first line of what each connection asked for; with
    `credentials` it answers 407 unless Proxy-Authorization carries them."""

    def __init__(self, credentials: bytes | None = None) -> None:
        self.credentials = credentials
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> LoopbackProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0]
            self.heads.append(request_line)
            if self.credentials is not None and b"Proxy-Authorization: Basic " + self.credentials not in head:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                writer.close()
                return
            method, target, _ = request_line.split(b" ")
            if method == b"CONNECT":
                host, port = target.rsplit(b":", 1)
                upstream_reader, upstream_writer = await asyncio.open_connection(host.decode(), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                authority = target.split(b"/")[2].decode()
                host, port = authority.rsplit(":", 1)
                upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
                upstream_writer.write(head)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def case_https_through_a_proxy_tunnel(client: UpstreamClient, tmp_path: Path) -> None:
    context, cert = server_tls(tmp_path)
    with trusting(cert):
        async with LoopbackProxy() as proxy, ScriptedServer(answer_chunked, tls=context) as server:
            proxied = UpstreamClient(read_size=4096, socket_buffer=8192,
                                     proxies={"https": f"http://127.0.0.1:{proxy.port}"})
            try:
                assert await post(proxied, server.url) == (200, b"data: 1\n\ndata: [DONE]\n\n", True)
                assert (await post(proxied, server.url))[1] == b"data: 2\n\ndata: [DONE]\n\n"
            finally:
                proxied.close()
        port = server.url.split("/")[2].split(":")[1]
        assert proxy.heads == [f"CONNECT localhost:{port} HTTP/1.1".encode()]  # one tunnel, kept alive
        assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")  # origin form inside TLS


async def case_http_through_a_proxy_with_credentials(client: UpstreamClient, tmp_path: Path) -> None:
    async with LoopbackProxy(credentials=b"dXNlcjpwQHNz") as proxy, ScriptedServer(answer_chunked) as server:
        proxied = UpstreamClient(read_size=4096, socket_buffer=8192,
                                 proxies={"http": f"http://user:p%40ss@127.0.0.1:{proxy.port}"})  # p@ss
        try:
            assert await post(proxied, server.url) == (200, b"data: 1\n\ndata: [DONE]\n\n", True)
        finally:
            proxied.close()
    assert proxy.heads == [f"POST {server.url} HTTP/1.1".encode()]  # absolute form to a proxy
    assert b"Proxy-Authorization" in server.requests[0]  # piped as sent (a real proxy would strip it)


async def case_proxy_refusal_is_a_connect_error(client: UpstreamClient, tmp_path: Path) -> None:
    context, _ = server_tls(tmp_path)
    async with LoopbackProxy(credentials=b"c2VjcmV0") as proxy, ScriptedServer(answer_chunked, tls=context) as server:
        proxied = UpstreamClient(read_size=4096, socket_buffer=8192,
                                 proxies={"https": f"http://127.0.0.1:{proxy.port}"})
        try:
            with pytest.raises(UpstreamConnectError, match=r"answered CONNECT .* with 407 .*credentials"):
                await post(proxied, server.url)
        finally:
            proxied.close()
    assert server.connections == 0


async def case_no_proxy_and_bad_proxy_urls(client: UpstreamClient, tmp_path: Path) -> None:
    async with ScriptedServer(answer_chunked) as server:
        bypassed = UpstreamClient(read_size=4096, socket_buffer=8192,
                                  proxies={"http": "http://127.0.0.1:9", "no": "localhost,127.0.0.1"})
        broken = UpstreamClient(read_size=4096, socket_buffer=8192, proxies={"http": "socks5://127.0.0.1:1080"})
        try:
            assert (await post(bypassed, server.url))[0] == 200  # NO_PROXY names the host: straight there
            with pytest.raises(UpstreamConnectError, match=r"HTTP_PROXY='socks5://127\.0\.0\.1:1080': a proxy must"):
                await post(broken, server.url)
        finally:
            bypassed.close()
            broken.close()


def test_proxies_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "vllm.internal")
    client = UpstreamClient(read_size=4096, socket_buffer=0)
    proxy = client.proxy_for(("https", "api.openai.com", 443))
    assert proxy is not None and (proxy.host, proxy.port) == ("proxy.internal", 3128)
    assert client.proxy_for(("https", "vllm.internal", 443)) is None
    assert client.proxy_for(("http", "api.openai.com", 80)) is None  # HTTP_PROXY is not set
    for loopback in ("localhost", "127.0.0.1", "127.0.0.53", "::1"):  # a model server on this host: direct
        assert client.proxy_for(("https", loopback, 8000)) is None


CASES = {name.removeprefix("case_"): fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])  # uvloop is what the gateway runs on
@pytest.mark.parametrize("case", sorted(CASES))
def test_upstream_client(case: str, loop: str, tmp_path: Path) -> None:
    async def main() -> None:
        client = UpstreamClient(read_size=4096, socket_buffer=8192, proxies={})  # whatever the environment says
        try:
            await asyncio.wait_for(CASES[case](client, tmp_path), 30)
        finally:
            client.close()

    (uvloop.run if loop == "uvloop" else asyncio.run)(main())


def test_header_injection_is_refused() -> None:
    target = parse_target("http://127.0.0.1:9/v1/x")
    with pytest.raises(ValueError, match="invalid character"):
        request_bytes(target, {"X-Evil": "a\r\nHost: elsewhere"}, b"")
    with pytest.raises(ValueError, match="not an http"):
        parse_target("ftp://example.com/")
