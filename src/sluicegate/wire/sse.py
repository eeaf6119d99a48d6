"""Server-sent events (WHATWG HTML "server-sent events"), sans-IO.

Two tools with different costs:

* `SSEFrameSplitter` finds event *boundaries* only (a blank line) and hands back the raw bytes of every complete
  event, untouched. It is the pass-through fast path: no field parsing, no decoding.
* `SSEDecoder` parses fields into `SSEEvent`s (data/event/id/retry, comments, BOM, CR/LF/CRLF). It is used where
  the gateway has to look inside events: the first event of a stream, translated providers, tests, the bench tool.

Both cost O(bytes) over a whole stream however the input is split: neither rescans bytes it has already
searched, and both bound the size of one event (`max_event_bytes`) so memory per stream stays bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sluicegate.wire.errors import FrameTooLarge

DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024

# A blank line is two consecutive line terminators; terminators are CRLF, lone CR or lone LF.
_BOUNDARY = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. `event` defaults to "message" as the spec says; `id` is the last event id seen."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEFrameSplitter:
    """Splits a byte stream into complete SSE events without parsing them.

    `feed()` returns the bytes of all events completed by this input (possibly several, concatenated exactly as
    received) or b"" when no event completed yet; the rest is held. Each byte is searched once, plus at most three
    bytes of overlap with the previous input (a boundary is at most four bytes: CRLF CRLF). A CR at the very end of
    the input is held back: it may be the first half of a CRLF split across reads.
    """

    __slots__ = ("_max", "_pending", "_tail", "pending_bytes")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._pending: list[bytes] = []
        self.pending_bytes = 0  # read-only outside: bytes held for an event not yet complete
        self._tail = b""  # last bytes held (at most 3), to find a boundary that straddles two reads

    def feed(self, data: bytes) -> bytes:
        if not self.pending_bytes and data.endswith(b"\n\n"):
            # The common case: a read of whole events (LF LF ends an event whatever came before it).
            return data
        tail = self._tail
        if b"\r" not in data and b"\r" not in tail:
            # LF-only framing (nearly every upstream): one C-level search from the end.
            end = data.rfind(b"\n\n")
            if end >= 0:
                return self._emit(data, end + 2)
            if tail[-1:] == b"\n" and data[:1] == b"\n":
                return self._emit(data, 1)
            return self._hold(data)
        window = tail + data
        last_end = -1
        for match in _BOUNDARY.finditer(window):
            end = match.end()
            if end == len(window) and window[-1] == 13:  # CR: its LF may come in the next read
                break
            last_end = end
        cut = last_end - len(tail)
        if last_end < 0 or cut < 0:
            return self._hold(data)
        return self._emit(data, cut)

    def _hold(self, data: bytes) -> bytes:
        if data:
            self._pending.append(data)
            self.pending_bytes += len(data)
            self._tail = (self._tail + data)[-3:]
            if self.pending_bytes > self._max:
                raise FrameTooLarge(f"SSE event larger than {self._max} bytes")
        return b""

    def _emit(self, data: bytes, end: int) -> bytes:
        pending = self._pending
        if pending:
            out = b"".join(pending) + data[:end]
            pending.clear()
        else:
            out = data if end == len(data) else data[:end]
        self.pending_bytes = 0
        self._tail = b""
        if end != len(data):
            self._hold(data[end:])
        return out

    def flush(self) -> bytes:
        """At end of stream: the bytes of an unterminated event (the spec discards it; pass-through forwards it)."""
        out = b"".join(self._pending)
        self._pending.clear()
        self.pending_bytes = 0
        self._tail = b""
        return out


class SSEDecoder:
    """Incremental WHATWG SSE parser: bytes in, `SSEEvent`s out.

    The receive buffer remembers where the current (incomplete) line starts; a line is decoded once, when its
    terminator arrives. A CR ending one input and an LF starting the next count as one CRLF.
    """

    __slots__ = ("_buf", "_data", "_event", "_id", "_max", "_pending_bytes", "_skip_lf", "_started", "retry")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._skip_lf = False
        self._started = False
        self._max = max_event_bytes
        self._pending_bytes = 0
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        if not data:
            return []
        buf = self._buf
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        start_search = len(buf)
        buf += data
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(bytes(buf)):
                return []  # could still be a BOM split across reads
            self._started = True
            if buf[:3] == _BOM:
                del buf[:3]
                start_search = 0
        events: list[SSEEvent] = []
        line_start = 0
        pos = start_search
        while True:
            match = _LINE_END.search(buf, pos)
            if match is None:
                break
            end = match.start()
            if match.group() == b"\r" and match.end() == len(buf):
                self._skip_lf = True  # a following LF belongs to this CR
            self._line(bytes(buf[line_start:end]), events)
            line_start = pos = match.end()
        if line_start:
            del buf[:line_start]
        if len(buf) + self._pending_bytes > self._max:
            raise FrameTooLarge(f"SSE event larger than {self._max} bytes")
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            self._dispatch(events)
            return
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return  # comment (keep-alive)
        field, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._pending_bytes += len(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\x00" not in value:
                self._id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if not self._data:
            self._event = ""
            self._pending_bytes = 0
            return
        events.append(SSEEvent("\n".join(self._data), self._event or "message", self._id))
        self._data = []
        self._event = ""
        self._pending_bytes = 0

    @property
    def at_boundary(self) -> bool:
        """True when no partial line and no undispatched data are held (the input so far ended an event)."""
        return not self._buf and not self._data

    @property
    def last_event_id(self) -> str | None:
        return self._id


def encode_event(data: str | bytes, event: str | None = None) -> bytes:
    """Encode one event; multi-line data becomes several `data:` lines, as the spec requires."""
    text = data.decode() if isinstance(data, bytes) else data
    head = f"event: {event}\n" if event else ""
    if "\n" not in text and "\r" not in text:
        return f"{head}data: {text}\n\n".encode()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return (head + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


def encode_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


DONE_EVENT = b"data: [DONE]\n\n"
PING_COMMENT = b": ping\n\n"
