"""Incremental splitter for Gemini's streamed JSON array (``streamGenerateContent`` without ``alt=sse``).

The body is one array ``[{...},{...}]`` arriving in arbitrary pieces. Each complete element is returned as
soon as its last byte arrives, as the exact bytes the upstream sent (pass-through needs no re-serialising).

This frames, it does not validate: inside an element only strings, escapes and bracket depth are tracked;
the element's JSON is checked by whoever decodes it. The array's own grammar (``[``, commas, ``]``) is
checked here.

Cost: the bytes of a feed are examined at most twice (a C-level validation of an element that arrived
whole, else a resumable scan that never revisits earlier feeds) and copied at most twice (into the pending
element, then into the frame), so a body fed in tiny pieces costs O(bytes). Memory: one pending element, at
most max_frame_bytes.
"""

from __future__ import annotations

import enum
import re
from typing import Final

import msgspec

from sluicegate.wire.errors import CorruptFrame, FrameTooLarge, TruncatedStream, WireError

DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024

_BOM: Final = b"\xef\xbb\xbf"
_WHITESPACE: Final = re.compile(rb"[ \t\r\n]*")
# Skips, in C, everything up to the next bracket: plain bytes and complete strings (possessive: no
# backtracking). It stops early only at a string that is not complete in this feed.
_PLAIN_AND_STRINGS: Final = re.compile(rb'(?:[^"{}\[\]]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
# The rest of a string body: stops at the closing quote, or at a backslash whose escaped byte is not here yet.
_STRING_BODY: Final = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
# Validates without building objects: the fast path for an element that arrives whole in one feed.
_JSON_VALIDATOR: Final = msgspec.json.Decoder(msgspec.Raw)
# A bare top-level value (number, true, false, null) ends at the first byte that may follow an element.
_SCALAR_END: Final = re.compile(rb"[ \t\r\n,\]]")
_SCALAR: Final = re.compile(rb"-?[0-9][0-9eE+\-.]*|true|false|null")

_QUOTE: Final = ord('"')
_COMMA: Final = ord(",")
_CLOSE_ARRAY: Final = ord("]")
_BACKSLASH: Final = ord("\\")
_OPENERS: Final = frozenset(b"{[")
_SCALAR_STARTS: Final = frozenset(b"-0123456789tfn")


class _State(enum.Enum):
    BEFORE_ARRAY = enum.auto()  # waiting for an optional BOM, whitespace, then "["
    BETWEEN = enum.auto()  # inside the array, between elements
    IN_ELEMENT = enum.auto()
    AFTER_ARRAY = enum.auto()  # "]" seen; only whitespace may follow
    FAILED = enum.auto()


class _Expect(enum.Enum):
    FIRST = enum.auto()  # right after "[": an element or "]"
    SEPARATOR = enum.auto()  # after an element: "," or "]"
    ELEMENT = enum.auto()  # after ",": an element


class JSONArraySplitter:
    """Feed body bytes, get back the bytes of each complete top-level element of the array."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._state = _State.BEFORE_ARRAY
        self._expect = _Expect.FIRST
        self._bom_checked = False
        self._head = b""  # the body's first bytes, held back while they may still be a split BOM
        self._pending = bytearray()  # start of an element that continues in a later feed
        self._element_start = 0  # where the current element begins in the data being scanned
        self._last_closer: int | None = None  # in the data being scanned; found once per feed, when needed
        self._depth = 0
        self._in_string = False
        self._escape_pending = False  # the previous feed ended on a backslash inside a string
        self._is_scalar = False
        self._consumed = 0  # body bytes before the current feed, for error positions

    def feed(self, data: bytes) -> list[bytes]:
        """Return the elements completed by ``data``, in order. Raises WireError subclasses on bad input."""
        if self._state is _State.FAILED:
            raise CorruptFrame("splitter already failed on earlier input")
        try:
            return self._feed(data)
        except WireError:
            self._state = _State.FAILED
            self._pending = bytearray()
            raise

    def finish(self) -> None:
        """Declare the end of the body; raises TruncatedStream unless the array was closed."""
        if self._state is _State.AFTER_ARRAY:
            return
        if self._state is _State.FAILED:
            raise CorruptFrame("splitter already failed on earlier input")
        where = "inside an element" if self._state is _State.IN_ELEMENT else "before the closing ']'"
        self._state = _State.FAILED
        self._pending = bytearray()
        raise TruncatedStream(f"JSON array body ended {where} after {self._consumed} bytes")

    def _feed(self, data: bytes) -> list[bytes]:
        if not self._bom_checked:
            data = self._strip_bom(data)
        frames: list[bytes] = []
        self._element_start = 0  # an element carried over from the previous feed continues at byte 0
        self._last_closer = None
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state is _State.IN_ELEMENT:
                pos = self._scan_element(data, pos, frames)
            elif state is _State.BETWEEN:
                pos = self._between(data, pos, frames)
            elif state is _State.BEFORE_ARRAY:
                pos = _skip_whitespace(data, pos)
                if pos < end:
                    if data[pos] != ord("["):
                        raise CorruptFrame(f"body must start with '[' (byte {self._consumed + pos})")
                    self._state = _State.BETWEEN
                    pos += 1
            else:  # AFTER_ARRAY
                pos = _skip_whitespace(data, pos)
                if pos < end:
                    raise CorruptFrame(f"data after the closing ']' (byte {self._consumed + pos})")
        self._consumed += end
        return frames

    def _strip_bom(self, data: bytes) -> bytes:
        head = self._head + data if self._head else data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = b""
        self._bom_checked = True
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _between(self, data: bytes, pos: int, frames: list[bytes]) -> int:
        pos = _skip_whitespace(data, pos)
        if pos == len(data):
            return pos
        byte = data[pos]
        if byte == _COMMA:
            if self._expect is not _Expect.SEPARATOR:
                raise CorruptFrame(f"unexpected ',' in JSON array (byte {self._consumed + pos})")
            self._expect = _Expect.ELEMENT
            return pos + 1
        if byte == _CLOSE_ARRAY:
            if self._expect is _Expect.ELEMENT:
                raise CorruptFrame(f"trailing ',' before ']' in JSON array (byte {self._consumed + pos})")
            self._state = _State.AFTER_ARRAY
            return pos + 1
        if self._expect is _Expect.SEPARATOR:
            raise CorruptFrame(f"missing ',' between JSON array elements (byte {self._consumed + pos})")
        if byte in _OPENERS:
            end = self._whole_element_end(data, pos)
            if end > 0:
                return self._emit_whole(data, pos, end, frames)
            self._depth, self._in_string, self._is_scalar = 1, False, False
        elif byte == _QUOTE:
            self._depth, self._in_string, self._is_scalar = 0, True, False
        elif byte in _SCALAR_STARTS:
            self._depth, self._in_string, self._is_scalar = 0, False, True
        else:
            raise CorruptFrame(f"unexpected byte in JSON array (byte {self._consumed + pos})")
        self._state = _State.IN_ELEMENT
        self._escape_pending = False
        self._element_start = pos
        return self._scan_element(data, pos + 1, frames)

    def _whole_element_end(self, data: bytes, start: int) -> int:
        """End of the element at ``start`` if it is valid JSON ending at this feed's last bracket, else -1.

        A validated single value that starts with its opening bracket ends at its matching closer, so this is
        the end the scanner would find. Anything else (several elements, an incomplete or invalid one) takes
        the scanner, which is one more pass over bytes this feed already holds.
        """
        if self._last_closer is None:
            self._last_closer = max(data.rfind(b"}"), data.rfind(b"]"))
        end = self._last_closer + 1
        if end <= start:
            return -1
        try:
            _JSON_VALIDATOR.decode(memoryview(data)[start:end])
        except (msgspec.DecodeError, RecursionError):  # msgspec refuses very deep nesting; the scanner does not
            return -1
        return end

    def _emit_whole(self, data: bytes, start: int, end: int, frames: list[bytes]) -> int:
        if end - start > self.max_frame_bytes:
            raise FrameTooLarge(f"JSON array element exceeds {self.max_frame_bytes} bytes")
        frames.append(data[start:end])
        self._expect = _Expect.SEPARATOR
        return end

    def _scan_element(self, data: bytes, pos: int, frames: list[bytes]) -> int:
        """Scan the current element from ``pos``; emit it if it ends here. Returns where scanning stopped."""
        start = self._element_start
        end = self._find_element_end(data, pos)
        if end < 0:
            if len(self._pending) + len(data) - start > self.max_frame_bytes:
                raise FrameTooLarge(f"JSON array element exceeds {self.max_frame_bytes} bytes")
            self._pending += memoryview(data)[start:]
            return len(data)
        if len(self._pending) + end - start > self.max_frame_bytes:
            raise FrameTooLarge(f"JSON array element exceeds {self.max_frame_bytes} bytes")
        if self._pending:
            self._pending += memoryview(data)[start:end]
            frame = bytes(self._pending)
            self._pending = bytearray()
        else:
            frame = data[start:end]
        if self._is_scalar and _SCALAR.fullmatch(frame) is None:
            raise CorruptFrame(f"invalid bare value in JSON array (ending at byte {self._consumed + end})")
        frames.append(frame)
        self._state = _State.BETWEEN
        self._expect = _Expect.SEPARATOR
        return end

    def _find_element_end(self, data: bytes, pos: int) -> int:
        """Index just past the element's last byte, or -1 if it continues beyond ``data``."""
        if self._is_scalar:
            match = _SCALAR_END.search(data, pos)
            return -1 if match is None else match.start()
        end = len(data)
        if self._escape_pending:
            if pos == end:
                return -1
            self._escape_pending = False
            pos += 1
        depth = self._depth
        in_string = self._in_string
        while pos < end:
            if in_string:
                body = _STRING_BODY.match(data, pos)
                pos = body.end() if body else pos
                if pos == end:
                    break
                if data[pos] == _BACKSLASH:  # the escaped byte is in the next feed
                    self._escape_pending = True
                    pos = end
                    break
                in_string = False
                pos += 1
                if depth == 0:  # a bare top-level string
                    self._in_string = False
                    return pos
                continue
            skipped = _PLAIN_AND_STRINGS.match(data, pos)
            pos = skipped.end() if skipped else pos
            if pos == end:
                break
            byte = data[pos]
            pos += 1
            if byte == _QUOTE:  # a string that continues in the next feed
                in_string = True
            elif byte in _OPENERS:
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    self._depth = 0
                    return pos
        self._depth = depth
        self._in_string = in_string
        return -1


def _skip_whitespace(data: bytes, pos: int) -> int:
    match = _WHITESPACE.match(data, pos)
    return match.end() if match else pos
