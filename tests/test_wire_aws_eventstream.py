"""EventStreamDecoder / encode_message: AWS event-stream framing as Bedrock streams it."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import struct
import time
import uuid
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.wire.aws_eventstream import (
    EventStreamDecoder,
    EventStreamMessage,
    HeaderValue,
    Int8,
    Int16,
    Int32,
    Int64,
    Timestamp,
    decode_headers,
    encode_headers,
    encode_message,
)
from sluicegate.wire.errors import CorruptFrame, FrameTooLarge, TruncatedStream, WireError

FIXTURES = Path(__file__).parent / "fixtures"
BEDROCK = FIXTURES / "bedrock"
VECTORS = FIXTURES / "aws-eventstream" / "vectors"

# ConverseStream event types per recording, read independently of the decoder (botocore).
# MS messageStart, BS contentBlockStart, D contentBlockDelta, BE contentBlockStop, ME messageStop, MD metadata.
EVENT_TYPES = {
    "apisix-converse-text.bin": "MS D D BE ME MD",
    "kong-converse-text.bin": "MS D D BE ME MD",
    "kong-converse-tool-use.read1.bin": "MS BS D",
    "kong-converse-tool-use.read2.bin": "D D",
    "kong-converse-tool-use.read3.bin": "D D BE ME MD",
    "pydantic-ai-claude-sonnet4-reasoning.bin": "MS" + " D" * 15 + " BE" + " D" * 5 + " BE ME MD",
    "pydantic-ai-claude37-redacted-reasoning.bin": "MS D BE D BE" + " D" * 10 + " BE ME MD",
    "pydantic-ai-gpt-oss-empty-text-delta.bin": "MS D BE D BE D D BE ME MD",
    "pydantic-ai-nova-micro-text.bin": "MS" + " D" * 29 + " BE ME MD",
    "pydantic-ai-nova-micro-tool-use-then-text.bin": "MS" + " D" * 19 + " BE BS D BE ME MD",
    "pydantic-ai-nova2-code-interpreter.bin": "MS BS D BE BS D BE BS D BE ME MD",
}
ABBREVIATIONS = {
    "MS": "messageStart",
    "BS": "contentBlockStart",
    "D": "contentBlockDelta",
    "BE": "contentBlockStop",
    "ME": "messageStop",
    "MD": "metadata",
}
KONG_TOOL_USE = b"".join((BEDROCK / f"kong-converse-tool-use.read{i}.bin").read_bytes() for i in (1, 2, 3))


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({0, len(data), *cuts})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def decode_chunks(chunks: Iterable[bytes], max_message_bytes: int = 1 << 24) -> list[EventStreamMessage]:
    decoder = EventStreamDecoder(max_message_bytes)
    messages: list[EventStreamMessage] = []
    for chunk in chunks:
        messages += decoder.feed(chunk)
    decoder.finish()
    return messages


def frame(header_block: bytes, payload: bytes, total: int | None = None) -> bytes:
    """A message around arbitrary header bytes, with correct CRCs (so the headers themselves get parsed)."""
    total = 16 + len(header_block) + len(payload) if total is None else total
    prelude = struct.pack(">II", total, len(header_block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + header_block + payload
    return body + struct.pack(">I", zlib.crc32(body))


# --- official AWS test vectors ------------------------------------------------------------------------------


def expected_header(entry: dict[str, Any]) -> HeaderValue:
    kind, value = entry["type"], entry["value"]
    converters: dict[int, Any] = {
        0: lambda v: v,
        1: lambda v: v,
        2: Int8,
        3: Int16,
        4: Int32,
        5: Int64,
        6: base64.b64decode,
        7: lambda v: base64.b64decode(v).decode(),
        8: Timestamp,
        9: lambda v: uuid.UUID(bytes=base64.b64decode(v)),
    }
    result: HeaderValue = converters[kind](value)
    return result


POSITIVE = sorted(p.stem for p in (VECTORS / "decoded" / "positive").glob("*.json"))
NEGATIVE = sorted(p.stem for p in (VECTORS / "decoded" / "negative").glob("*.txt"))


def test_vector_sets_are_present() -> None:
    assert POSITIVE == ["all_headers", "empty_message", "int32_header", "payload_no_headers", "payload_one_str_header"]
    assert NEGATIVE == ["corrupted_header_len", "corrupted_headers", "corrupted_length", "corrupted_payload"]


@pytest.mark.parametrize("case", POSITIVE)
def test_positive_vector_decodes_to_the_expected_message(case: str) -> None:
    raw = (VECTORS / "encoded" / "positive" / f"{case}.bin").read_bytes()
    expected = json.loads((VECTORS / "decoded" / "positive" / f"{case}.json").read_text())
    total, headers_length, prelude_crc = struct.unpack_from(">III", raw)
    assert (total, headers_length) == (expected["total_length"], expected["headers_length"])
    assert prelude_crc == expected["prelude_crc"] & 0xFFFFFFFF
    assert struct.unpack_from(">I", raw, len(raw) - 4)[0] == expected["message_crc"] & 0xFFFFFFFF

    (message,) = decode_chunks([raw])
    assert list(message.headers.items()) == [(h["name"], expected_header(h)) for h in expected["headers"]]
    assert message.payload == base64.b64decode(expected["payload"])
    # Our encoder reproduces the official bytes exactly.
    assert encode_message(message.headers, message.payload) == raw


def test_all_headers_vector_has_every_value_type() -> None:
    (message,) = decode_chunks([(VECTORS / "encoded" / "positive" / "all_headers.bin").read_bytes()])
    assert message.headers == {
        "event-type": Int32(40972),
        "content-type": "application/json",
        "bool false": False,
        "bool true": True,
        "byte": Int8(-49),
        "byte buf": b"I'm a little teapot!",
        "timestamp": Timestamp(8675309),
        "int16": Int16(42),
        "int64": Int64(42424242),
        "uuid": uuid.UUID("01020304-0506-0708-090a-0b0c0d0e0f10"),
    }
    assert message.payload == b"{'foo':'bar'}"


@pytest.mark.parametrize("case", NEGATIVE)
def test_negative_vector_raises_corrupt_frame_naming_the_checksum(case: str) -> None:
    raw = (VECTORS / "encoded" / "negative" / f"{case}.bin").read_bytes()
    expected_text = (VECTORS / "decoded" / "negative" / f"{case}.txt").read_text().strip()
    for chunks in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        with pytest.raises(CorruptFrame) as caught:
            decode_chunks(chunks)
        assert str(caught.value).lower() == expected_text.lower()


# --- real Bedrock streams -----------------------------------------------------------------------------------


def test_all_recordings_are_present() -> None:
    assert sorted(p.name for p in BEDROCK.glob("*.bin")) == sorted(EVENT_TYPES)


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_recorded_stream_decodes_every_frame(name: str) -> None:
    messages = decode_chunks([(BEDROCK / name).read_bytes()])
    assert [m.event_type for m in messages] == [ABBREVIATIONS[a] for a in EVENT_TYPES[name].split()]
    for message in messages:
        assert message.message_type == "event"
        assert message.exception_type is None
        assert message.headers[":content-type"] == "application/json"
        assert isinstance(json.loads(message.payload), dict)
        # Re-encoding gives back the recorded frame, so nothing was lost or reordered.
        assert encode_message(message.headers, message.payload) in (BEDROCK / name).read_bytes()


def test_kong_tool_use_reads_each_end_on_a_frame_boundary_and_concatenate() -> None:
    decoder = EventStreamDecoder()
    per_read = [decoder.feed((BEDROCK / f"kong-converse-tool-use.read{i}.bin").read_bytes()) for i in (1, 2, 3)]
    decoder.finish()
    assert [len(messages) for messages in per_read] == [3, 2, 5]
    messages = [m for read in per_read for m in read]
    assert messages == decode_chunks([KONG_TOOL_USE])
    payloads = [json.loads(m.payload) for m in messages]
    assert payloads[1]["start"]["toolUse"]["name"] == "add"
    arguments = "".join(p["delta"]["toolUse"]["input"] for p in payloads if "delta" in p)
    assert json.loads(arguments) == {"a": 2, "b": 12}
    assert payloads[-2]["stopReason"] == "tool_use"
    assert payloads[-1]["usage"]["totalTokens"] == 522


RECORDINGS = [(BEDROCK / name).read_bytes() for name in sorted(EVENT_TYPES)] + [KONG_TOOL_USE]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_recorded_streams_split_anywhere_give_the_same_messages(data: st.DataObject) -> None:
    body = data.draw(st.sampled_from(RECORDINGS))
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    assert decode_chunks(split_at(body, cuts)) == decode_chunks([body])


def test_botocore_agrees_on_every_recorded_frame() -> None:
    eventstream = pytest.importorskip("botocore.eventstream")
    for body in RECORDINGS:
        theirs = eventstream.EventStreamBuffer()
        theirs.add_data(body)
        ours = decode_chunks([body])
        assert [(m.headers, m.payload) for m in ours] == [(m.headers, m.payload) for m in theirs]


# --- generated messages -------------------------------------------------------------------------------------

header_values = st.one_of(
    st.booleans(),
    st.integers(-(2**7), 2**7 - 1).map(Int8),
    st.integers(-(2**15), 2**15 - 1).map(Int16),
    st.integers(-(2**31), 2**31 - 1).map(Int32),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.binary(max_size=300),
    st.text(max_size=100),
    st.integers(-(2**63), 2**63 - 1).map(Timestamp),
    st.uuids(),
)
header_names = st.text(min_size=1, max_size=30)
headers_strategy = st.dictionaries(header_names, header_values, max_size=6)
messages_strategy = st.lists(st.tuples(headers_strategy, st.binary(max_size=400)), max_size=5)


@settings(max_examples=300, deadline=None)
@given(messages=messages_strategy, data=st.data())
def test_generated_messages_round_trip_split_anywhere(
    messages: list[tuple[dict[str, HeaderValue], bytes]], data: st.DataObject
) -> None:
    body = b"".join(encode_message(headers, payload) for headers, payload in messages)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=min(len(body) + 1, 200)))
    decoded = decode_chunks(split_at(body, cuts))
    assert [(m.headers, m.payload) for m in decoded] == messages
    assert [list(m.headers) for m in decoded] == [list(h) for h, _ in messages]  # order kept


def plain(value: HeaderValue) -> Any:
    """A header value as botocore represents it."""
    if isinstance(value, Int8 | Int16 | Int32 | Int64):
        return value.value
    if isinstance(value, Timestamp):
        return value.epoch_millis
    if isinstance(value, uuid.UUID):
        return value.bytes
    return value


@settings(max_examples=200, deadline=None)
@given(headers=headers_strategy, payload=st.binary(max_size=400))
def test_botocore_decodes_what_we_encode(headers: dict[str, HeaderValue], payload: bytes) -> None:
    eventstream = pytest.importorskip("botocore.eventstream")
    theirs = eventstream.EventStreamBuffer()
    theirs.add_data(encode_message(headers, payload))
    (message,) = list(theirs)
    assert message.headers == {name: plain(value) for name, value in headers.items()}
    assert message.payload == payload


# --- typed headers and encoding -----------------------------------------------------------------------------


def test_each_python_type_selects_its_wire_type() -> None:
    cases: list[tuple[HeaderValue, bytes]] = [
        (True, b"\x00"),
        (False, b"\x01"),
        (Int8(-1), b"\x02\xff"),
        (Int16(258), b"\x03\x01\x02"),
        (Int32(-2), b"\x04\xff\xff\xff\xfe"),
        (Int64(1), b"\x05" + b"\x00" * 7 + b"\x01"),
        (b"\x00\xff", b"\x06\x00\x02\x00\xff"),
        ("é", b"\x07\x00\x02\xc3\xa9"),
        (Timestamp(1000), b"\x08" + (1000).to_bytes(8, "big")),
        (uuid.UUID(int=1), b"\x09" + b"\x00" * 15 + b"\x01"),
    ]
    for value, encoded in cases:
        block = encode_headers({"k": value})
        assert block == b"\x01k" + encoded
        assert decode_headers(block) == {"k": value}


@pytest.mark.parametrize(
    "make", [lambda: Int8(128), lambda: Int8(-129), lambda: Int16(2**15), lambda: Int32(2**31), lambda: Int64(2**63)]
)
def test_integer_wrappers_reject_out_of_range_values(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_encoding_rejects_what_the_format_cannot_carry() -> None:
    with pytest.raises(TypeError):
        Int8(True)
    with pytest.raises(TypeError):
        encode_headers({"k": 5})  # type: ignore[dict-item]  # a plain int does not say its width
    with pytest.raises(ValueError):
        encode_headers({"": "x"})
    with pytest.raises(ValueError):
        encode_headers({"n" * 256: "x"})
    with pytest.raises(ValueError):
        encode_headers({"k": "x" * 65536})
    assert decode_headers(encode_headers({"n" * 255: b"x" * 65535})) == {"n" * 255: b"x" * 65535}


def test_timestamp_converts_to_utc_datetime() -> None:
    assert Timestamp(1_700_000_000_123).to_datetime() == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


def test_exception_message_properties() -> None:
    raw = encode_message(
        {
            ":message-type": "exception",
            ":exception-type": "throttlingException",
            ":content-type": "application/json",
        },
        b'{"message":"Too many requests"}',
    )
    (message,) = decode_chunks([raw])
    assert message.message_type == "exception"
    assert message.exception_type == "throttlingException"
    assert message.event_type is None
    assert json.loads(message.payload) == {"message": "Too many requests"}


def test_headers_of_one_message_cannot_leak_into_another() -> None:
    raw = encode_message({":event-type": "chunk"}, b"{}")
    first, second = decode_chunks([raw + raw])
    first.headers[":event-type"] = "changed"
    assert second.event_type == "chunk"


# --- malformed input ----------------------------------------------------------------------------------------


def test_total_length_below_minimum_is_corrupt() -> None:
    with pytest.raises(CorruptFrame, match="minimum"):
        decode_chunks([frame(b"", b"", total=15)])


def test_headers_length_past_the_message_is_corrupt() -> None:
    prelude = struct.pack(">II", 20, 8)
    with pytest.raises(CorruptFrame, match="headers_length"):
        EventStreamDecoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude)))


@pytest.mark.parametrize(
    ("block", "words"),
    [
        (b"\x05ab", "header name overruns"),
        (b"\x01a", "header name overruns"),  # no type byte
        (b"\x01a\x07\x00\x05abc", "header value overruns"),
        (b"\x01a\x07\x00", "length overruns"),
        (b"\x01a\x06\x01", "length overruns"),
        (b"\x01a\x04\x00\x00", "header value overruns"),
        (b"\x01a\x05" + b"\x00" * 7, "header value overruns"),
        (b"\x01a\x08\x00", "header value overruns"),
        (b"\x01a\x09" + b"\x00" * 15, "header value overruns"),
        (b"\x01a\x0a", "unknown header value type 10"),
        (b"\x01\xff\x00", "header name is not valid UTF-8"),
        (b"\x01a\x07\x00\x01\xff", "string header value is not valid UTF-8"),
    ],
)
def test_malformed_headers_are_corrupt_with_a_reason(block: bytes, words: str) -> None:
    with pytest.raises(CorruptFrame, match=words):
        decode_chunks([frame(block, b"payload")])


def test_message_checksum_mismatch_is_reported_as_such() -> None:
    raw = bytearray(encode_message({":event-type": "x"}, b"hello"))
    raw[-6] ^= 0x01
    with pytest.raises(CorruptFrame, match="message checksum mismatch"):
        decode_chunks([bytes(raw)])


@pytest.mark.parametrize("keep", [1, 11, 12, 13, 40])
def test_input_ending_inside_a_message_is_truncated(keep: int) -> None:
    raw = encode_message({":event-type": "contentBlockDelta"}, b'{"text":"hi"}')
    decoder = EventStreamDecoder()
    assert decoder.feed(raw + raw[:keep]) != []
    with pytest.raises(TruncatedStream):
        decoder.finish()


def test_empty_stream_finishes_cleanly() -> None:
    EventStreamDecoder().finish()


def test_a_failed_decoder_stays_failed() -> None:
    decoder = EventStreamDecoder()
    with pytest.raises(CorruptFrame):
        decoder.feed(b"\x00" * 16)
    with pytest.raises(WireError):
        decoder.feed(encode_message({}, b""))


# --- size limit ---------------------------------------------------------------------------------------------


def test_oversized_message_is_refused_from_its_prelude_alone() -> None:
    limit = 64 * 1024
    raw = encode_message({":event-type": "x"}, b"z" * limit)
    decoder = EventStreamDecoder(max_message_bytes=limit)
    assert decoder.feed(raw[:11]) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(raw[11:12])  # the 12th byte completes the prelude: nothing more is buffered


def test_default_limit_refuses_a_prelude_announcing_more_than_16_mib() -> None:
    with pytest.raises(FrameTooLarge):
        EventStreamDecoder().feed(frame(b"", b"", total=16 * 1024 * 1024 + 1)[:12])
    at_limit = frame(b"", b"", total=16 * 1024 * 1024)[:12]
    assert EventStreamDecoder().feed(at_limit) == []


def test_message_of_exactly_the_limit_is_accepted() -> None:
    raw = encode_message({}, b"q" * 84)
    assert len(raw) == 100
    assert decode_chunks([raw], max_message_bytes=100)[0].payload == b"q" * 84
    with pytest.raises(FrameTooLarge):
        decode_chunks([raw], max_message_bytes=99)


# --- robustness and cost ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), data=st.data())
def test_random_bytes_only_raise_wire_errors(body: bytes, data: st.DataObject) -> None:
    with contextlib.suppress(WireError):
        decode_chunks(split_at(body, data.draw(st.lists(st.integers(0, len(body)), max_size=10))))


@settings(max_examples=500, deadline=None)
@given(block=st.binary(max_size=120), payload=st.binary(max_size=20))
def test_random_header_blocks_with_valid_checksums_only_raise_corrupt_frame(block: bytes, payload: bytes) -> None:
    try:
        (message,) = decode_chunks([frame(block, payload)])
    except CorruptFrame:
        return
    assert message.payload == payload
    if "" in message.headers:  # decoding tolerates an empty name; encoding refuses to produce one
        return
    reencoded = encode_headers(message.headers)
    assert decode_headers(reencoded) == message.headers
    # Only a repeated name (last one wins) can make the re-encoding differ from the original.
    assert reencoded == block or len(reencoded) < len(block)


@settings(max_examples=300, deadline=None)
@given(messages=messages_strategy, data=st.data())
def test_mutated_streams_only_raise_wire_errors(
    messages: list[tuple[dict[str, HeaderValue], bytes]], data: st.DataObject
) -> None:
    body = bytearray(b"".join(encode_message(h, p) for h, p in messages))
    if not body:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(WireError):
        decode_chunks(split_at(bytes(body), data.draw(st.lists(st.integers(0, len(body)), max_size=8))))


def test_many_messages_in_one_feed_cost_linear_time() -> None:
    one = encode_message(
        {":event-type": "contentBlockDelta", ":content-type": "application/json", ":message-type": "event"},
        b'{"contentBlockIndex":0,"delta":{"text":"hi"},"p":"abcdefgh"}',
    )
    body = one * 30_000  # ~4 MB
    for chunks in ([body], [body[:1], body[1:]]):  # straight from the input, and through the buffer
        started = time.perf_counter()
        messages = decode_chunks(chunks)
        elapsed = time.perf_counter() - started
        assert len(messages) == 30_000
        assert elapsed < 10, f"{elapsed:.1f}s for 30k messages in one feed"


def test_large_message_fed_one_byte_at_a_time_costs_linear_time() -> None:
    # About 0.5 s when linear; copying the buffer on every feed would take ~30 s.
    raw = encode_message({":event-type": "chunk"}, b"x" * 1_000_000)
    decoder = EventStreamDecoder()
    messages: list[EventStreamMessage] = []
    started = time.perf_counter()
    for i in range(len(raw)):
        messages += decoder.feed(raw[i : i + 1])
    elapsed = time.perf_counter() - started
    decoder.finish()
    assert len(messages) == 1 and len(messages[0].payload) == 1_000_000
    assert elapsed < 10, f"{elapsed:.1f}s to feed {len(raw)} bytes one at a time"
