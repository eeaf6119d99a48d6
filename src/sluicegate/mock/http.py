"""HTTP/1.1 response framing for the mock: status lines, headers, chunked transfer encoding."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

SERVER_HEADER: Final = b"Server: sluicegate-mock\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


def _header_block(headers: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)


@functools.lru_cache(maxsize=64)
def stream_head(status: int, content_type: str, keep_alive: bool) -> bytes:
    """Status line and headers of a chunked (streamed) response."""
    headers = [
        ("Content-Type", content_type),
        ("Cache-Control", "no-cache"),
        ("Transfer-Encoding", "chunked"),
    ]
    if not keep_alive:
        headers.append(("Connection", "close"))
    return _status_line(status) + SERVER_HEADER + _header_block(headers) + b"\r\n"


def full_response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    content_type: str = "application/json",
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A complete response with a Content-Length body."""
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra_headers]
    if not keep_alive:
        headers.append(("Connection", "close"))
    return _status_line(status) + SERVER_HEADER + _header_block(headers) + b"\r\n" + body


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body (empty data would end the body, so it yields nothing)."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
