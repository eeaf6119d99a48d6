"""Incremental line splitter for newline-delimited JSON bodies (Ollama ``/api/chat``).

Lines end with LF or CRLF (a CR arriving in one feed and its LF in the next is handled); the terminator is
not part of the returned line. Blank (empty or whitespace-only) lines are skipped. Lines are returned as the
exact bytes received; the JSON inside is checked by whoever decodes it.

End of body: Ollama terminates every line, but recorded bodies and other NDJSON servers may omit the last
newline, so ``finish()`` returns a final unterminated line rather than raising. A line cut short by a dropped
connection is then caught by the JSON decode of that line (and, for Ollama, by the missing ``"done": true``).

Cost: each byte is searched once and copied at most twice, so a body fed in tiny pieces costs O(bytes).
Memory: one pending line, at most max_line_bytes (plus one byte for a CR whose LF has not arrived).
"""

from __future__ import annotations

from typing import Final

from sluicegate.wire.errors import CorruptFrame, FrameTooLarge, WireError

DEFAULT_MAX_LINE_BYTES: Final = 16 * 1024 * 1024

_LF: Final = b"\n"
_CR: Final = ord("\r")


class NDJSONSplitter:
    """Feed body bytes, get back each complete non-blank line without its terminator."""

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._pending = bytearray()  # start of a line that continues in a later feed
        self._failed = False
        self._finished = False

    def feed(self, data: bytes) -> list[bytes]:
        """Return the lines completed by ``data``, in order. Raises FrameTooLarge for an over-long line."""
        self._check_usable()
        try:
            return self._feed(data)
        except WireError:
            self._failed = True
            self._pending = bytearray()
            raise

    def finish(self) -> list[bytes]:
        """Declare the end of the body; returns the final unterminated line, if it is not blank."""
        self._check_usable()
        self._finished = True
        line = bytes(self._pending)
        self._pending = bytearray()
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.isspace():
            return []
        return [line]

    def _check_usable(self) -> None:
        if self._failed:
            raise CorruptFrame("splitter already failed on earlier input")
        if self._finished:
            raise CorruptFrame("splitter already finished")

    def _feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        limit = self.max_line_bytes
        pos = 0
        newline = data.find(_LF)
        if newline >= 0 and self._pending:
            self._pending += memoryview(data)[:newline]
            line = bytes(self._pending)
            self._pending = bytearray()
            self._add(line, lines)
            pos = newline + 1
            newline = data.find(_LF, pos)
        while newline >= 0:
            # Most lines are complete within one feed: slice them straight out of ``data``.
            line = data[pos:newline]
            self._add(line, lines)
            pos = newline + 1
            newline = data.find(_LF, pos)
        if pos < len(data):
            size = len(self._pending) + len(data) - pos
            # One byte of slack: the pending line may end with a CR whose LF is in the next feed.
            if size > limit + 1 or (size == limit + 1 and data[-1] != _CR):
                raise FrameTooLarge(f"NDJSON line exceeds {limit} bytes")
            self._pending += memoryview(data)[pos:]
        return lines

    def _add(self, line: bytes, lines: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line_bytes:
            raise FrameTooLarge(f"NDJSON line exceeds {self.max_line_bytes} bytes")
        if line and not line.isspace():
            lines.append(line)
