"""The seam between the mock server loop and a wire format.

A `WireApi` (one per `--format`) maps request paths to `StreamFormat`s and renders its own error bodies.
A `StreamFormat` reads what it needs from a request body and opens a `StreamEncoder` for one reply; the
encoder returns ready-to-send bytes for each part of the reply, so the server loop never knows the format.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from typing import Any, Final, Protocol

import msgspec

from sluicegate.mock.tokens import TokenSource

SSE_CONTENT_TYPE: Final = "text/event-stream"
JSON_CONTENT_TYPE: Final = "application/json"

# A string no request can contain: marks the hole where per-event values are spliced into a template.
_SLOT: Final = f"\x00slot-{secrets.token_hex(8)}\x00"
_SLOT_JSON: Final = msgspec.json.encode(_SLOT)


@dataclasses.dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a reply needs to know about the request it answers."""

    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int


class StreamEncoder(Protocol):
    """Bytes of one reply. Calls come in order: head, tokens..., then end or error_event (stream), or body."""

    def head(self) -> bytes:
        """Events before the first token (may be empty)."""
        ...

    def tokens(self, start: int, stop: int) -> bytes:
        """The events of content tokens [start, stop)."""
        ...

    def end(self, sent: int, finish_reason: str) -> bytes:
        """The events closing a complete stream of `sent` tokens (finish, usage, terminator)."""
        ...

    def error_event(self) -> bytes:
        """One mid-stream error event, in the shape this format's clients raise on."""
        ...

    def body(self, sent: int, finish_reason: str) -> bytes:
        """The complete non-streaming response body for `sent` tokens."""
        ...


class StreamFormat(Protocol):
    """One endpoint's request reader and reply encoder factory."""

    stream_content_type: str

    def describe(self, body: Mapping[str, Any]) -> RequestInfo: ...

    def open(self, info: RequestInfo, source: TokenSource, usage: bool) -> StreamEncoder: ...


class WireApi(Protocol):
    """A family of endpoints served by one `--format`."""

    name: str

    def stream_format(self, path: str) -> StreamFormat | None:
        """The format answering POST `path`, or None."""
        ...

    def static_body(self, path: str) -> bytes | None:
        """The fixed JSON answer of GET `path` (e.g. the model list), or None."""
        ...

    def error_body(self, status: int, message: str, *, param: str | None, code: str | None) -> bytes:
        """An error body in the shape this family's SDKs parse."""
        ...

    def stream_error_body(self) -> bytes:
        """The body of a non-streaming reply that fails the way `error_after` fails a stream."""
        ...


def template(obj: object) -> tuple[bytes, bytes]:
    """Encode `obj` (holding `SLOT` exactly once) and return the bytes before and after the slot."""
    before, sep, after = msgspec.json.encode(obj).partition(_SLOT_JSON)
    if not sep or _SLOT_JSON in after:
        raise ValueError("template needs exactly one slot")
    return before, after


def template3(obj: object) -> tuple[bytes, bytes, bytes]:
    """Like `template` for an object holding `SLOT` exactly twice."""
    parts = msgspec.json.encode(obj).split(_SLOT_JSON)
    if len(parts) != 3:
        raise ValueError("template3 needs exactly two slots")
    return parts[0], parts[1], parts[2]


SLOT: Final = _SLOT


def sse_data(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def sse_event(name: str, payload: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def rough_token_count(text_length: int) -> int:
    """Prompt token estimate: about four characters per token, at least one."""
    return max(1, text_length // 4)
