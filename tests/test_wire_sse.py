"""The SSE codec: WHATWG parsing rules, and split invariance (any split of the input yields the same events)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.wire.errors import FrameTooLarge
from sluicegate.wire.sse import SSEDecoder, SSEEvent, SSEFrameSplitter, encode_event

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = sorted(p for p in FIXTURES.glob("openai-*/*.sse"))


def decode_all(data: bytes, pieces: list[int] | None = None) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in split(data, pieces or []):
        events += decoder.feed(piece)
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


# --- WHATWG parsing rules -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"data: a\n\n", [SSEEvent("a")]),
        (b"data:a\r\n\r\n", [SSEEvent("a")]),
        (b"data: a\r\rdata: b\r\r", [SSEEvent("a"), SSEEvent("b")]),
        (b"data: a\ndata: b\n\n", [SSEEvent("a\nb")]),
        (b"data:  two spaces\n\n", [SSEEvent(" two spaces")]),
        (b": comment\n\ndata: x\n\n", [SSEEvent("x")]),
        (b"event: e\ndata: x\nid: 7\n\n", [SSEEvent("x", "e", "7")]),
        (b"event: e\n\ndata: x\n\n", [SSEEvent("x")]),  # an event with no data dispatches nothing and resets type
        (b"data\n\n", [SSEEvent("")]),  # field with no colon: empty value
        (b"data: x\nid: a\x00b\n\n", [SSEEvent("x")]),  # id with NUL is ignored
        (b"Data: x\n\ndata: y\n\n", [SSEEvent("y")]),  # field names are case-sensitive
        (b"\xef\xbb\xbfdata: bom\n\n", [SSEEvent("bom")]),
        (b"data: unterminated", []),  # an incomplete event at the end is discarded
        (b"data: x\n\n\n\n", [SSEEvent("x")]),
        (b"data: caf\xc3\xa9\n\n", [SSEEvent("café")]),
    ],
)
def test_whatwg_rules(raw: bytes, expected: list[SSEEvent]) -> None:
    assert decode_all(raw) == expected
    # and byte by byte
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for i in range(len(raw)):
        events += decoder.feed(raw[i : i + 1])
    assert events == expected


def test_retry_field_only_digits() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"retry: 1500\n\nretry: 12x\n\n")
    assert decoder.retry == 1500


def test_crlf_split_across_reads_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [SSEEvent("a")]
    assert decoder.feed(b"\ndata: b\n\n") == [SSEEvent("b")]


# --- split invariance -----------------------------------------------------------------------------------------------
line_end = st.sampled_from([b"\n", b"\r\n", b"\r"])
field_line = st.one_of(
    st.builds(lambda v: b"data: " + v, st.text(
        alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20,
    ).map(str.encode)),
    st.builds(lambda v: b"event: " + v, st.sampled_from([b"message", b"error", b"response.created"])),
    st.just(b": ping"),
    st.just(b"id: 42"),
    st.just(b"data"),
)
sse_stream = st.lists(
    st.tuples(st.lists(st.tuples(field_line, line_end), min_size=1, max_size=4), line_end), max_size=12
).map(lambda events: b"".join(b"".join(f + e for f, e in lines) + end for lines, end in events))


@settings(max_examples=300, deadline=None)
@given(sse_stream, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_decoder_any_split_yields_same_events(data: bytes, cuts: list[int]) -> None:
    assert decode_all(data, cuts) == decode_all(data)


def splitter_run(data: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    splitter = SSEFrameSplitter()
    outs = [splitter.feed(piece) for piece in split(data, cuts)]
    return [o for o in outs if o], splitter.flush()


@settings(max_examples=300, deadline=None)
@given(sse_stream, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_splitter_is_byte_exact_and_cuts_only_at_event_boundaries(data: bytes, cuts: list[int]) -> None:
    outs, rest = splitter_run(data, cuts)
    assert b"".join(outs) + rest == data
    # Every cut is at an event boundary: after each emitted prefix, a decoder holds no partial line or data.
    decoder = SSEDecoder()
    for out in outs:
        decoder.feed(out)
        assert decoder.at_boundary
    # Nothing complete is held back (except an event ended by a final CR, which may be half of a CRLF).
    if not data.endswith(b"\r"):
        assert decode_all(b"".join(outs)) == decode_all(data)


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=100_000), max_size=40))
def test_recorded_streams_split_anywhere(path: Path, cuts: list[int]) -> None:
    data = path.read_bytes()
    assert decode_all(data, cuts) == decode_all(data)
    outs, rest = splitter_run(data, cuts)
    assert b"".join(outs) + rest == data
    assert rest.strip() == b""


def test_splitter_fast_path_boundary_across_reads() -> None:
    splitter = SSEFrameSplitter()
    assert splitter.feed(b"data: a\n") == b""
    assert splitter.feed(b"\ndata: b") == b"data: a\n\n"
    assert splitter.flush() == b"data: b"


def test_event_size_is_bounded() -> None:
    splitter = SSEFrameSplitter(max_event_bytes=1024)
    with pytest.raises(FrameTooLarge):
        for _ in range(100):
            splitter.feed(b"data: " + b"x" * 100)
    decoder = SSEDecoder(max_event_bytes=1024)
    with pytest.raises(FrameTooLarge):
        for _ in range(100):
            decoder.feed(b"data: " + b"x" * 100 + b"\n")


def test_tiny_pieces_cost_linear_time() -> None:
    # 400 KB in one event, fed 1 byte at a time. Quadratic rescanning would take minutes; linear takes well under 1 s
    # on this machine. The bound is generous so a loaded CI machine does not flake.
    data = b"data: " + b"x" * 400_000 + b"\n\n"
    started = time.process_time()
    splitter = SSEFrameSplitter()
    out = b"".join(splitter.feed(data[i : i + 1]) for i in range(len(data)))
    decoder = SSEDecoder()
    events = [e for i in range(0, len(data), 1) for e in decoder.feed(data[i : i + 1])]
    assert out == data and len(events) == 1
    assert time.process_time() - started < 20


def test_encode_event_multiline_round_trip() -> None:
    raw = encode_event("line1\nline2\r\nline3", "error")
    assert decode_all(raw) == [SSEEvent("line1\nline2\nline3", "error")]
