"""The gateway's upstream HTTP/1.1 client: keep-alive pools per (scheme, host, port), cached DNS, TLS, a connect
deadline, small kernel receive buffers, and HTTP proxies from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY).

Why not aiohttp's client here: a streamed body read through `StreamReader` costs a future, a coroutine resumption
and a writer coroutine per event. `UpstreamConnection.set_sink` hands each read to the relay from the read
callback instead, which halves the CPU per token (docs/benchmarks.md). Parsing is httptools (llhttp, the parser
Node.js uses); this module only writes request heads, which needs no parser.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from sluicegate.upstream.connection import UpstreamConnection
from sluicegate.upstream.errors import UpstreamClosed, UpstreamConnectError, UpstreamConnectTimeout
from sluicegate.upstream.proxy import HttpProxy, open_tunnel

# NO_PROXY matching as urllib does it (host names, domain suffixes, "*", host:port); not in typeshed's stubs.
_proxy_bypass: Callable[[str, Mapping[str, str]], bool] = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009

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


def request_bytes(target: Target, headers: Mapping[str, str], body: bytes, proxy: HttpProxy | None = None) -> bytes:
    """The whole request in one buffer (one write, one packet for small bodies). Through a proxy (plain http
    targets only; https goes through a CONNECT tunnel) the request line names the whole URL."""
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items()
                     if name.lower() not in _FRAMING)  # framing is ours
    # Configured headers are validated at load; this guards the rest (adapters, signers) in one pass: each field
    # must add exactly one CRLF and nothing else may break a line or hide a NUL.
    lines = fields.count("\n")
    if fields.count("\r") != lines or fields.count("\r\n") != lines or "\0" in fields or lines != sum(
            1 for name in headers if name.lower() not in _FRAMING):
        raise ValueError("invalid character in an upstream header (line break or NUL)")
    request_target = target.request_target
    if proxy is not None:
        request_target = b"http://" + target.host_header + request_target
        fields += proxy.authorization_field
    return b"".join((b"POST ", request_target, b" HTTP/1.1\r\nHost: ", target.host_header,
                     b"\r\nContent-Length: %d\r\n" % len(body), fields.encode("latin-1"), b"\r\n", body))


_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class UpstreamClient:
    def __init__(self, *, read_size: int, socket_buffer: int, idle_timeout: float = IDLE_TIMEOUT,
                 proxies: Mapping[str, str] | None = None) -> None:
        """`proxies`: scheme -> proxy URL, plus "no" -> a NO_PROXY list; None reads them from the environment, and
        then loopback upstreams are always reached directly (as Go's net/http does: a proxy variable set for the
        internet must not capture a model server on this host, nor the embedded demo upstream)."""
        self._proxy_settings = dict(urllib.request.getproxies_environment() if proxies is None else proxies)
        self._loopback_direct = proxies is None
        self._proxies: dict[PoolKey, HttpProxy | None] = {}
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
        proxy = self.proxy_for(target.key)
        request = request_bytes(target, headers, body, proxy if target.key[0] == "http" else None)
        conn = self._take_idle(target.key)
        if conn is not None:
            try:
                return await self._exchange(conn, request)
            except UpstreamClosed as exc:
                if not exc.before_response:
                    raise
                # The upstream closed the idle connection as we sent: nothing was processed, use a new one.
        return await self._exchange(await self._connect(target, connect_timeout, proxy), request)

    def proxy_for(self, key: PoolKey) -> HttpProxy | None:
        """The proxy for a target: HTTPS_PROXY / HTTP_PROXY by its scheme unless NO_PROXY names its host (or, for
        proxies from the environment, the host is loopback).
        Raises UpstreamConnectError for a proxy URL that is not http://host:port."""
        if key in self._proxies:
            return self._proxies[key]
        scheme, host, _ = key
        url = self._proxy_settings.get(scheme)
        proxy = None
        if url and not (self._loopback_direct and _is_loopback(host)) and not _proxy_bypass(host, self._proxy_settings):
            proxy = _parse_proxy(url, scheme)
        self._proxies[key] = proxy
        return proxy

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

    async def _connect(self, target: Target, connect_timeout: float, proxy: HttpProxy | None) -> UpstreamConnection:
        scheme, host, port = target.key
        loop = asyncio.get_running_loop()
        tls = scheme == "https"

        def protocol() -> UpstreamConnection:
            return UpstreamConnection(target.key, self._read_size, loop)

        try:
            async with asyncio.timeout(connect_timeout or None):  # 0 = no limit; covers proxy, tunnel and TLS too
                sock = await self._dial(*((proxy.host, proxy.port) if proxy is not None else (host, port)))
                try:
                    if proxy is not None and tls:
                        conn = await open_tunnel(loop, sock, proxy, host, port, self._ssl_context(), protocol)
                    else:
                        _, conn = await loop.create_connection(
                            protocol, sock=sock, ssl=self._ssl_context() if tls else None,
                            server_hostname=host if tls else None)
                except BaseException:
                    sock.close()
                    raise
                self._track(conn)
                return conn
        except TimeoutError:
            raise UpstreamConnectTimeout(f"no connection to {host}:{port} within {connect_timeout:g}s") from None
        except UpstreamConnectError:
            raise
        except OSError as exc:  # name resolution, TLS handshake
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}") from None

    async def _dial(self, host: str, port: int) -> socket.socket:
        """A connected TCP socket to the first of the host's addresses that answers."""
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        for family, type_, proto, address in await self._resolve(host, port):
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._socket_buffer:
                    # A small receive buffer bounds what the kernel holds for a stream whose client is not
                    # reading (the upstream is pushed back sooner); LLM streams need little window.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._socket_buffer)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise UpstreamConnectError(f"{host}:{port}: {type(last_error).__name__}: {last_error}")

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


def _parse_proxy(url: str, scheme: str) -> HttpProxy:
    variable = "HTTPS_PROXY" if scheme == "https" else "HTTP_PROXY"
    parts = urlsplit(url if "://" in url else f"http://{url}")  # curl's convention: a bare host:port is http
    try:
        port = parts.port or 80
    except ValueError:
        port = 0
    if parts.scheme != "http" or not parts.hostname or not port:
        raise UpstreamConnectError(f"{variable}={url!r}: a proxy must be given as http://[user:password@]host:port")
    authorization = ""
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode('ascii')}\r\n"
    return HttpProxy(parts.hostname, port, authorization)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
