"""The `data` payloads of an SSE stream, for translators that only read JSON data (Anthropic, Gemini).

Event boundaries come from `SSEFrameSplitter` (each byte searched once). The batch of complete events it returns is
then cut into payloads with C-level splits: LF and CRLF streams (every provider we translate) take the fast path;
a batch with a lone CR terminator goes through the full WHATWG parser. Comments, `event:`, `id:` and `retry:` lines
are skipped: the translated providers repeat the event name in the JSON.
"""

from __future__ import annotations

from typing import Final

from sluicegate.wire.sse import SSEDecoder, SSEFrameSplitter

_BOM: Final = b"\xef\xbb\xbf"
_LF: Final = 10


class SSEDataReader:
    __slots__ = ("_at_start", "_splitter")

    def __init__(self, max_event_bytes: int) -> None:
        self._splitter = SSEFrameSplitter(max_event_bytes)
        self._at_start = True

    def feed(self, data: bytes) -> list[bytes]:
        block = self._splitter.feed(data)
        return _payloads(self._strip_bom(block)) if block else []

    def flush(self) -> list[bytes]:
        """At end of body: the payload of a last event that lacks its blank line (some servers omit it)."""
        rest = self._strip_bom(self._splitter.flush())
        return _payloads(rest + b"\n\n") if rest.strip() else []

    def _strip_bom(self, block: bytes) -> bytes:
        if self._at_start and block:
            self._at_start = False
            if block.startswith(_BOM):
                return block[3:]
        return block


def _payloads(block: bytes) -> list[bytes]:
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
        if b"\r" in block:
            return [event.data.encode() for event in SSEDecoder(len(block) + 1).feed(block)]
    out: list[bytes] = []
    for event in block.split(b"\n\n"):
        at = event.find(b"data:")
        if at < 0:
            continue  # comment-only or field-less event
        if (at == 0 or event[at - 1] == _LF) and event.find(b"\n", at) < 0:
            # One data line, and it is the event's last line: the common shape.
            value = event[at + 5 :]
            out.append(value[1:] if value[:1] == b" " else value)
            continue
        lines = [_value(line) for line in event.split(b"\n") if line[:5] == b"data:" or line == b"data"]
        if lines:
            out.append(b"\n".join(lines))
    return out


def _value(line: bytes) -> bytes:
    value = line[5:]
    return value[1:] if value[:1] == b" " else value
