"""A minimal incremental SSE parser for the bench client.

Only what a load generator needs: the event name and the data of each complete event. Comments, `id` and
`retry` are ignored. CRLF and lone CR are normalised to LF as they arrive (a CR at the end of one chunk and LF
at the start of the next count once). The buffer remembers how far it has searched, so a stream that arrives
in tiny pieces costs O(bytes), not O(bytes^2).
"""

from __future__ import annotations

SSEEvent = tuple[bytes, bytes]
"""(event name, data). The name is b"" when the event had no `event:` field."""

_BOM = b"\xef\xbb\xbf"


def _parse_block(block: bytes) -> SSEEvent | None:
    # Fast path: by far the most common shape on the wire is one `data: ...` line.
    if block.startswith(b"data: ") and b"\n" not in block:
        return b"", block[6:]
    name = b""
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[0] == 0x3A:  # empty, or a ':' comment
            continue
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data_lines.append(value)
        elif field == b"event":
            name = value
    if not data_lines:
        return None
    return name, b"\n".join(data_lines)


class SSEParser:
    """Feed raw bytes, get back the events completed by them (possibly none)."""

    __slots__ = ("_buf", "_cr_pending", "_scanned", "_started")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no b"\n\n"
        self._cr_pending = False  # previous chunk ended in CR, which was already turned into LF
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not self._started:
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if self._cr_pending or b"\r" in chunk:
            chunk = self._normalise(chunk)
        buf = self._buf
        if not buf and chunk.endswith(b"\n\n"):
            # Whole events only, nothing buffered: skip the copy into the buffer.
            return self._parse_many(chunk[:-2])
        start = self._scanned - 1 if self._scanned > 0 else 0
        buf += chunk
        end = buf.rfind(b"\n\n", start)
        if end < 0:
            self._scanned = len(buf)
            return []
        complete = bytes(buf[:end])
        del buf[: end + 2]
        self._scanned = len(buf)  # rfind found the last boundary: the rest holds none
        return self._parse_many(complete)

    def _normalise(self, chunk: bytes) -> bytes:
        if self._cr_pending and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr_pending = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    @staticmethod
    def _parse_many(complete: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        for block in complete.split(b"\n\n"):
            event = _parse_block(block)
            if event is not None:
                events.append(event)
        return events
