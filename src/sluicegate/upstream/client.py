"""The gateway's upstream HTTP/1.1 client: keep-alive pools per (scheme, host, port), cached DNS, TLS, a connect
deadline, and small kernel receive buffers.

Why not aiohttp's client here: a streamed body read through `StreamReader` costs a future, a coroutine resumption
and a writer coroutine per event. `UpstreamConnection.set_sink` hands each read to the relay from the read
callback instead, which halves the CPU per token (docs/benchmarks.md). Parsing is httptools (llhttp, the parser
Node.js uses); this module only writes request heads, which needs no parser.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sluicegate.upstream.connection import UpstreamConnection
from sluicegate.upstream.errors import UpstreamClosed, UpstreamConnectError, UpstreamConnectTimeout

PoolKey = tuple[str, str, int]
Address = tuple[int, int, int, tuple[Any, ...]]  # family, type, proto, socket address

IDLE_TIMEOUT = 15.0  # an idle keep-alive connection is closed after this long (aiohttp's default too)
DNS_TTL = 300.0


@dataclass(frozen=True, slots=True)
class Target:
    key: PoolKey
    host_header: bytes
    request_target: bytes  # path and query exactly as given: a signed URL (SigV4) must go out as it was signed


def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname
    default_port = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    netloc_host = f"[{host}]" if ":" in host else host
    host_header = netloc_host if default_port else f"{netloc_host}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target((scheme, host, port), host_header.encode("ascii"), path.encode("ascii"))


def request_bytes(target: Target, headers: Mapping[str, str], body: bytes) -> bytes:
    """The whole request in one buffer (one write, one packet for small bodies)."""
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items()
                     if name.lower() not in _FRAMING)  # framing is ours
    # Configured headers are validated at load; this guards the rest (adapters, signers) in one pass: each field
    # must add exactly one CRLF and nothing else may break a line or hide a NUL.
    lines = fields.count("\n")
    if fields.count("\r") != lines or fields.count("\r\n") != lines or "\0" in fields or lines != sum(
            1 for name in headers if name.lower() not in _FRAMING):
        raise ValueError("invalid character in an upstream header (line break or NUL)")
    return b"".join((b"POST ", target.request_target, b" HTTP/1.1\r\nHost: ", target.host_header,
                     b"\r\nContent-Length: %d\r\n" % len(body), fields.encode("latin-1"), b"\r\n", body))


_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class UpstreamClient:
    def __init__(self, *, read_size: int, socket_buffer: int, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self._read_size = read_size
        self._socket_buffer = socket_buffer
        self._idle_timeout = idle_timeout
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self._targets: dict[str, Target] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._open: set[UpstreamConnection] = set()

    def target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            target = parse_target(url)
            if len(self._targets) < 10_000:  # URLs come from config (plus signed variants): bounded in practice
                self._targets[url] = target
        return target

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, *,
                   connect_timeout: float) -> UpstreamConnection:
        """Send a POST; returns once the response's status and headers are in. Raises UpstreamError."""
        target = self.target(url)
        request = request_bytes(target, headers, body)
        conn = self._take_idle(target.key)
        if conn is not None:
            try:
                return await self._exchange(conn, request)
            except UpstreamClosed as exc:
                if not exc.before_response:
                    raise
                # The upstream closed the idle connection as we sent: nothing was processed, use a new one.
        return await self._exchange(await self._connect(target, connect_timeout), request)

    @staticmethod
    async def _exchange(conn: UpstreamConnection, request: bytes) -> UpstreamConnection:
        try:
            conn.send(request)
            await conn.response_head()
        except BaseException:
            conn.close()
            raise
        return conn

    def release(self, conn: UpstreamConnection, *, reuse: bool) -> None:
        """Done with a response: keep the connection for the next request if it is clean, else close it."""
        if not (reuse and conn.reusable):
            conn.close()
            return
        conn.park()
        conn.idle_handle = asyncio.get_running_loop().call_later(self._idle_timeout, conn.close)
        self._idle.setdefault(conn.key, []).append(conn)

    def _take_idle(self, key: PoolKey) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.idle_handle is not None:
                conn.idle_handle.cancel()
                conn.idle_handle = None
            if not conn.closed:
                return conn
        return None

    async def _connect(self, target: Target, connect_timeout: float) -> UpstreamConnection:
        scheme, host, port = target.key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout or None):  # 0 = no limit
                addresses = await self._resolve(host, port)
                last_error: OSError | None = None
                for family, type_, proto, address in addresses:
                    sock = socket.socket(family, type_, proto)
                    try:
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        if self._socket_buffer:
                            # A small receive buffer bounds what the kernel holds for a stream whose client is
                            # not reading (the upstream is pushed back sooner); LLM streams need little window.
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._socket_buffer)
                        await loop.sock_connect(sock, address)
                    except OSError as exc:
                        sock.close()
                        last_error = exc
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    try:
                        _, conn = await loop.create_connection(
                            lambda: UpstreamConnection(target.key, self._read_size, loop), sock=sock,
                            ssl=self._ssl_context() if scheme == "https" else None,
                            server_hostname=host if scheme == "https" else None)
                    except BaseException:
                        sock.close()
                        raise
                    self._track(conn)
                    return conn
                raise UpstreamConnectError(f"{type(last_error).__name__}: {last_error}")
        except TimeoutError:
            raise UpstreamConnectTimeout(f"no connection to {host}:{port} within {connect_timeout:g}s") from None
        except UpstreamConnectError:
            raise
        except OSError as exc:  # name resolution, TLS handshake
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}") from None

    def _track(self, conn: UpstreamConnection) -> None:
        self._open.add(conn)
        conn.on_lost = self._forget

    def _forget(self, conn: UpstreamConnection) -> None:
        """The connection is gone (closed by either side): drop every reference, idle or not."""
        self._open.discard(conn)
        if conn.idle_handle is not None:
            conn.idle_handle.cancel()
            conn.idle_handle = None
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    async def _resolve(self, host: str, port: int) -> list[Address]:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, (host, port))]
        cached = self._dns.get((host, port))
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[Address] = [(family, type_, proto, addr) for family, type_, proto, _, addr in infos]
        if not addresses:
            raise UpstreamConnectError(f"{host} has no addresses")
        self._dns[(host, port)] = (now + DNS_TTL, addresses)
        return addresses

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
