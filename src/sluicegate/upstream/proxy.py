"""Reaching an https upstream through an HTTP proxy: a CONNECT tunnel, then TLS to the upstream inside it.

The proxy's answer to CONNECT is parsed by httptools like any response head. Once it says 2xx, TLS starts on the
same socket (`loop.start_tls`, verified against the upstream's name, not the proxy's) and the connection is handed
to an `UpstreamConnection`, which never learns that a proxy is in between.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import httptools

from sluicegate.upstream.connection import UpstreamConnection
from sluicegate.upstream.errors import UpstreamConnectError


@dataclass(frozen=True, slots=True)
class HttpProxy:
    host: str
    port: int
    authorization_field: str  # "Proxy-Authorization: Basic ...\r\n", or "" without credentials

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class _ConnectReply(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT (its status line and headers, nothing more)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._settle(UpstreamConnectError(f"the proxy's answer to CONNECT is not HTTP: {exc}"))

    def on_headers_complete(self) -> None:
        self._settle(self._parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle(UpstreamConnectError("the proxy closed the connection before answering CONNECT"))

    def _settle(self, outcome: int | UpstreamConnectError) -> None:
        if self.status.done():
            return
        if isinstance(outcome, UpstreamConnectError):
            self.status.set_exception(outcome)
        else:
            self.status.set_result(outcome)


async def open_tunnel(loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: HttpProxy, host: str, port: int,
                      context: ssl.SSLContext, protocol: Callable[[], UpstreamConnection]) -> UpstreamConnection:
    """`sock` is connected to the proxy. Returns the upstream connection, TLS established. The caller bounds the
    time (the connect deadline) and closes `sock` on failure."""
    transport, reply = await loop.create_connection(lambda: _ConnectReply(loop), sock=sock)
    try:
        authority = f"[{host}]" if ":" in host else host
        transport.write(f"CONNECT {authority}:{port} HTTP/1.1\r\nHost: {authority}:{port}\r\n"
                        f"{proxy.authorization_field}\r\n".encode("latin-1"))
        status = await reply.status
        if not 200 <= status < 300:
            hint = " (the proxy wants credentials: http://user:password@host:port)" if status == 407 else ""
            raise UpstreamConnectError(f"the proxy {proxy} answered CONNECT {authority}:{port} with {status}{hint}")
        tls_transport = await loop.start_tls(transport, reply, context, server_hostname=host)
        if tls_transport is None:
            raise UpstreamConnectError("TLS could not be started inside the proxy tunnel")
    except BaseException:
        transport.close()
        raise
    conn = protocol()
    tls_transport.set_protocol(conn)
    conn.connection_made(tls_transport)
    return conn
