"""What can go wrong talking to an upstream, before the gateway layer maps it to a retry condition and an HTTP
error. Every class is an OSError, so code that only cares that "the network failed" can catch that."""

from __future__ import annotations


class UpstreamError(OSError):
    pass


class UpstreamConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, name not found, TLS handshake failed)."""


class UpstreamConnectTimeout(UpstreamError):
    """The connection was not made within the connect deadline."""


class UpstreamClosed(UpstreamError):
    """The connection ended before the response did. `before_response`: not one byte of the response arrived (on a
    reused keep-alive connection that usually means the upstream closed it while idle, so a fresh one is tried)."""

    def __init__(self, message: str, *, before_response: bool = False) -> None:  # default: copy.copy() works
        super().__init__(message)
        self.before_response = before_response


class UpstreamProtocolError(UpstreamError):
    """The upstream's bytes are not valid HTTP/1.1."""
