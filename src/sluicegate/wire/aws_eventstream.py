"""AWS event stream (``application/vnd.amazon.eventstream``) decoder and encoder, as used by Bedrock streams.

Message layout (all integers big-endian)::

    total_length u32 | headers_length u32 | prelude_crc u32 | headers | payload | message_crc u32

Both CRCs are zlib's CRC32: the prelude CRC covers the first 8 bytes, the message CRC everything before it.
A header is ``name_len u8, name, type u8, value``; the ten value types are listed in ``HeaderType``.

The decoder checks the prelude as soon as its 12 bytes arrive, so a corrupt or oversized length is reported
before anything more is buffered. Cost: received bytes are appended to one buffer and consumed through an
offset; the buffer is compacted once per feed, and what it then moves is a partial message that arrived in
that same feed, so total work is O(bytes) however the stream is split. Memory: at most one partial message,
bounded by max_message_bytes.
"""

from __future__ import annotations

import datetime
import enum
import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from sluicegate.wire.errors import CorruptFrame, FrameTooLarge, TruncatedStream, WireError

DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
PRELUDE_BYTES: Final = 12
MIN_MESSAGE_BYTES: Final = 16  # prelude + message CRC, no headers, no payload

# Header blocks repeat per event type; small ones are decoded once per decoder.
_CACHED_BLOCKS: Final = 64
_CACHED_BLOCK_MAX_BYTES: Final = 1024

_PRELUDE: Final = struct.Struct(">III")
_U32: Final = struct.Struct(">I")
_U16: Final = struct.Struct(">H")
_I8: Final = struct.Struct(">b")
_I16: Final = struct.Struct(">h")
_I32: Final = struct.Struct(">i")
_I64: Final = struct.Struct(">q")


class HeaderType(enum.IntEnum):
    """The value type byte of a header."""

    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    SHORT = 3
    INTEGER = 4
    LONG = 5
    BYTE_ARRAY = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


@dataclass(frozen=True, slots=True)
class Int8:
    """A header value sent as type 2 (signed 8-bit)."""

    value: int

    def __post_init__(self) -> None:
        _check_range(self.value, 8)


@dataclass(frozen=True, slots=True)
class Int16:
    """A header value sent as type 3 (signed 16-bit)."""

    value: int

    def __post_init__(self) -> None:
        _check_range(self.value, 16)


@dataclass(frozen=True, slots=True)
class Int32:
    """A header value sent as type 4 (signed 32-bit)."""

    value: int

    def __post_init__(self) -> None:
        _check_range(self.value, 32)


@dataclass(frozen=True, slots=True)
class Int64:
    """A header value sent as type 5 (signed 64-bit)."""

    value: int

    def __post_init__(self) -> None:
        _check_range(self.value, 64)


@dataclass(frozen=True, slots=True)
class Timestamp:
    """A header value sent as type 8: milliseconds since the Unix epoch (signed 64-bit)."""

    epoch_millis: int

    def __post_init__(self) -> None:
        _check_range(self.epoch_millis, 64)

    def to_datetime(self) -> datetime.datetime:
        """The instant as an aware UTC datetime (raises OverflowError outside datetime's range)."""
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        return epoch + datetime.timedelta(milliseconds=self.epoch_millis)


# bool -> types 0/1, bytes -> 6, str -> 7, uuid.UUID -> 9; integers need a wrapper to say their width.
HeaderValue: TypeAlias = bool | Int8 | Int16 | Int32 | Int64 | bytes | str | Timestamp | uuid.UUID


def _check_range(value: int, bits: int) -> None:
    if type(value) is not int:
        raise TypeError(f"header integer must be int, not {type(value).__name__}")
    bound = 1 << (bits - 1)
    if not -bound <= value < bound:
        raise ValueError(f"header value does not fit in a signed {bits}-bit integer")


@dataclass(frozen=True, slots=True)
class EventStreamMessage:
    """One decoded message: its headers (in wire order) and its payload."""

    headers: dict[str, HeaderValue]
    payload: bytes

    @property
    def message_type(self) -> str | None:
        """``:message-type``: "event", "exception" or "error"."""
        return _str_header(self.headers, ":message-type")

    @property
    def event_type(self) -> str | None:
        """``:event-type``, e.g. "contentBlockDelta"."""
        return _str_header(self.headers, ":event-type")

    @property
    def exception_type(self) -> str | None:
        """``:exception-type``, e.g. "throttlingException"."""
        return _str_header(self.headers, ":exception-type")


def _str_header(headers: Mapping[str, HeaderValue], name: str) -> str | None:
    value = headers.get(name)
    return value if isinstance(value, str) else None


class EventStreamDecoder:
    """Feed body bytes, get back each complete, checksum-verified message."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes < MIN_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be at least {MIN_MESSAGE_BYTES}")
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._pending_total = 0  # total_length of the partial message at the buffer's start, once checked
        self._failed = False
        self._header_cache: dict[bytes, dict[str, HeaderValue]] = {}

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        """Return the messages completed by ``data``, in order. Raises WireError subclasses on bad input."""
        if self._failed:
            raise CorruptFrame("decoder already failed on earlier input")
        try:
            return self._feed(data)
        except WireError:
            self._failed = True
            self._buffer = bytearray()
            raise

    def finish(self) -> None:
        """Declare the end of the body; raises TruncatedStream if a partial message is left over."""
        if self._failed:
            raise CorruptFrame("decoder already failed on earlier input")
        if self._buffer:
            left = len(self._buffer)
            self._failed = True
            self._buffer = bytearray()
            raise TruncatedStream(f"event stream ended inside a message ({left} bytes left over)")

    def _feed(self, data: bytes) -> list[EventStreamMessage]:
        buffered = bool(self._buffer)
        if buffered:
            self._buffer += data
            view = memoryview(self._buffer)
        else:
            # Nothing pending: decode straight from ``data`` and keep only its unfinished tail.
            view = memoryview(data)
        messages: list[EventStreamMessage] = []
        pos = 0
        end = len(view)
        while end - pos >= PRELUDE_BYTES:
            total = self._pending_total or self._check_prelude(view, pos)
            if end - pos < total:
                self._pending_total = total  # checked once, however many feeds the rest takes
                break
            self._pending_total = 0
            messages.append(self._decode_message(view, pos, total))
            pos += total
        # On error feed() drops the buffer, so compaction only happens here.
        if buffered:
            view.release()  # a bytearray cannot be resized while a view of it is alive
            del self._buffer[:pos]
        elif pos < end:
            self._buffer = bytearray(view[pos:])
        return messages

    def _check_prelude(self, view: memoryview, pos: int) -> int:
        total, headers_length, prelude_crc = _PRELUDE.unpack_from(view, pos)
        if zlib.crc32(view[pos : pos + 8]) != prelude_crc:
            raise CorruptFrame("prelude checksum mismatch")
        if total < MIN_MESSAGE_BYTES:
            raise CorruptFrame(f"total_length {total} is below the {MIN_MESSAGE_BYTES}-byte minimum")
        if total > self.max_message_bytes:
            raise FrameTooLarge(f"message of {total} bytes exceeds {self.max_message_bytes}")
        if headers_length > total - MIN_MESSAGE_BYTES:
            raise CorruptFrame(f"headers_length {headers_length} overruns the {total}-byte message")
        return int(total)

    def _decode_message(self, view: memoryview, pos: int, total: int) -> EventStreamMessage:
        crc_at = pos + total - 4
        (message_crc,) = _U32.unpack_from(view, crc_at)
        if zlib.crc32(view[pos:crc_at]) != message_crc:
            raise CorruptFrame("message checksum mismatch")
        (headers_length,) = _U32.unpack_from(view, pos + 4)
        headers_at = pos + PRELUDE_BYTES
        payload_at = headers_at + headers_length
        header_block = bytes(view[headers_at:payload_at])
        cached = self._header_cache.get(header_block)
        if cached is None:
            cached = decode_headers(header_block)
            if headers_length <= _CACHED_BLOCK_MAX_BYTES:
                if len(self._header_cache) >= _CACHED_BLOCKS:  # bounded whatever the stream sends
                    self._header_cache.clear()
                self._header_cache[header_block] = cached
        # Copy so that a caller changing one message's headers cannot change another's.
        return EventStreamMessage(headers=dict(cached), payload=bytes(view[payload_at:crc_at]))


def decode_headers(block: bytes) -> dict[str, HeaderValue]:
    """Decode a complete header block; CorruptFrame if a header overruns it or is malformed."""
    headers: dict[str, HeaderValue] = {}
    pos = 0
    end = len(block)
    while pos < end:
        name_end = pos + 1 + block[pos]
        if name_end + 1 > end:
            raise CorruptFrame("header name overruns the headers section")
        name = _utf8(block[pos + 1 : name_end], "header name")
        kind = block[name_end]
        pos = name_end + 1
        value: HeaderValue
        if kind == HeaderType.BOOL_TRUE:
            value = True
        elif kind == HeaderType.BOOL_FALSE:
            value = False
        elif kind == HeaderType.STRING or kind == HeaderType.BYTE_ARRAY:
            if pos + 2 > end:
                raise CorruptFrame("header value length overruns the headers section")
            (length,) = _U16.unpack_from(block, pos)
            pos += 2
            if pos + length > end:
                raise CorruptFrame("header value overruns the headers section")
            raw = block[pos : pos + length]
            value = _utf8(raw, "string header value") if kind == HeaderType.STRING else raw
            pos += length
        elif HeaderType.BYTE <= kind <= HeaderType.LONG or kind == HeaderType.TIMESTAMP:
            fmt = _FIXED_INT[kind]
            if pos + fmt.size > end:
                raise CorruptFrame("header value overruns the headers section")
            (number,) = fmt.unpack_from(block, pos)
            pos += fmt.size
            value = _INT_WRAPPER[kind](number)
        elif kind == HeaderType.UUID:
            if pos + 16 > end:
                raise CorruptFrame("header value overruns the headers section")
            value = uuid.UUID(bytes=block[pos : pos + 16])
            pos += 16
        else:
            raise CorruptFrame(f"unknown header value type {kind}")
        headers[name] = value
    return headers


_FIXED_INT: Final[dict[int, struct.Struct]] = {
    HeaderType.BYTE: _I8,
    HeaderType.SHORT: _I16,
    HeaderType.INTEGER: _I32,
    HeaderType.LONG: _I64,
    HeaderType.TIMESTAMP: _I64,
}
_INT_WRAPPER: Final[dict[int, type[Int8 | Int16 | Int32 | Int64 | Timestamp]]] = {
    HeaderType.BYTE: Int8,
    HeaderType.SHORT: Int16,
    HeaderType.INTEGER: Int32,
    HeaderType.LONG: Int64,
    HeaderType.TIMESTAMP: Timestamp,
}


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFrame(f"{what} is not valid UTF-8") from None


def encode_headers(headers: Mapping[str, HeaderValue]) -> bytes:
    """Encode headers in mapping order. ``str`` -> string, ``bytes`` -> byte array, ``bool`` -> true/false."""
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        if not 0 < len(raw_name) <= 255:
            raise ValueError("header name must be 1 to 255 bytes of UTF-8")
        out.append(len(raw_name))
        out += raw_name
        if type(value) is bool:
            out.append(HeaderType.BOOL_TRUE if value else HeaderType.BOOL_FALSE)
        elif isinstance(value, str | bytes):
            raw = value.encode("utf-8") if isinstance(value, str) else value
            if len(raw) > 0xFFFF:
                raise ValueError(f"header {name!r} value exceeds 65535 bytes")
            out.append(HeaderType.STRING if isinstance(value, str) else HeaderType.BYTE_ARRAY)
            out += _U16.pack(len(raw))
            out += raw
        elif isinstance(value, Int8):
            out.append(HeaderType.BYTE)
            out += _I8.pack(value.value)
        elif isinstance(value, Int16):
            out.append(HeaderType.SHORT)
            out += _I16.pack(value.value)
        elif isinstance(value, Int32):
            out.append(HeaderType.INTEGER)
            out += _I32.pack(value.value)
        elif isinstance(value, Int64):
            out.append(HeaderType.LONG)
            out += _I64.pack(value.value)
        elif isinstance(value, Timestamp):
            out.append(HeaderType.TIMESTAMP)
            out += _I64.pack(value.epoch_millis)
        elif isinstance(value, uuid.UUID):
            out.append(HeaderType.UUID)
            out += value.bytes
        else:
            raise TypeError(f"header {name!r}: unsupported value type {type(value).__name__}")
    return bytes(out)


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """Encode one complete message (prelude, headers, payload and both CRCs)."""
    header_block = encode_headers(headers)
    total = MIN_MESSAGE_BYTES + len(header_block) + len(payload)
    if total > 0xFFFFFFFF:
        raise ValueError("message exceeds the 4 GiB limit of total_length")
    prelude = _U32.pack(total) + _U32.pack(len(header_block))
    prelude += _U32.pack(zlib.crc32(prelude))
    body = prelude + header_block + payload
    return body + _U32.pack(zlib.crc32(body))
