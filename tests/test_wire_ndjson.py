"""NDJSONSplitter: Ollama's newline-delimited JSON, split into lines however the bytes arrive."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.wire.errors import CorruptFrame, FrameTooLarge, WireError
from sluicegate.wire.ndjson import NDJSONSplitter

FIXTURES = Path(__file__).parent / "fixtures" / "ollama"
FIXTURE_NAMES = sorted(p.name for p in FIXTURES.glob("*.ndjson"))
# Lines per recording, counted independently of the splitter.
EXPECTED_LINES = {
    "prism-gpt-oss-think-false-still-thinks.ndjson": 62,
    "prism-gpt-oss-thinking.ndjson": 67,
    "prism-granite3-basic-text.ndjson": 37,
    "prism-granite3-tool-call.ndjson": 2,
    "prism-qwen3-single-tool-call.ndjson": 2,
    "prism-qwen3-think-tags-single-line.ndjson": 1,
    "prism-qwen3-two-tool-calls.ndjson": 3,
}


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({0, len(data), *cuts})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def split_chunks(chunks: Iterable[bytes], max_line_bytes: int = 1 << 24) -> list[bytes]:
    splitter = NDJSONSplitter(max_line_bytes)
    lines: list[bytes] = []
    for chunk in chunks:
        lines += splitter.feed(chunk)
    return lines + splitter.finish()


def reference_lines(body: bytes) -> list[bytes]:
    """What the splitter must produce, computed the slow, obvious way."""
    out = []
    for line in body.split(b"\n"):
        line = line.removesuffix(b"\r")
        if line.strip(b" \t\n\r\x0b\x0c"):
            out.append(line)
    return out


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --- real recorded streams ----------------------------------------------------------------------------------


def test_all_recordings_are_present() -> None:
    assert sorted(EXPECTED_LINES) == FIXTURE_NAMES


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_recorded_stream_splits_into_json_lines_ending_with_done(name: str) -> None:
    body = fixture(name)
    lines = split_chunks([body])
    assert len(lines) == EXPECTED_LINES[name]
    decoded = [json.loads(line) for line in lines]
    assert all(chunk["done"] is False for chunk in decoded[:-1])
    assert decoded[-1]["done"] is True
    assert decoded[-1]["done_reason"] == "stop"
    assert all(b"\n" not in line and not line.endswith(b"\r") for line in lines)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_recorded_stream_with_crlf_and_no_final_newline(name: str) -> None:
    lf_lines = split_chunks([fixture(name)])
    crlf_body = fixture(name).replace(b"\n", b"\r\n").removesuffix(b"\r\n")
    splitter = NDJSONSplitter()
    lines = splitter.feed(crlf_body)
    assert lines == lf_lines[:-1]  # the last line has no terminator yet
    assert splitter.finish() == lf_lines[-1:]


def test_thinking_deltas_come_before_content() -> None:
    decoded = [json.loads(line) for line in split_chunks([fixture("prism-gpt-oss-thinking.ndjson")])]
    thinking = "".join(chunk["message"].get("thinking", "") for chunk in decoded)
    content = "".join(chunk["message"]["content"] for chunk in decoded)
    assert thinking and content
    first_content = next(i for i, chunk in enumerate(decoded) if chunk["message"]["content"])
    assert all(not chunk["message"].get("thinking") for chunk in decoded[first_content:])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_recorded_streams_split_anywhere_give_the_same_lines(data: st.DataObject) -> None:
    body = fixture(data.draw(st.sampled_from(FIXTURE_NAMES)))
    body = body.replace(b"\n", data.draw(st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r\n \r\n"])))
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    assert split_chunks(split_at(body, cuts)) == split_chunks([body]) == reference_lines(body)


# --- generated bodies ---------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=300), data=st.data())
def test_any_bytes_split_anywhere_match_the_reference(body: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=len(body) + 1))
    assert split_chunks(split_at(body, cuts)) == split_chunks([body]) == reference_lines(body)


@st.composite
def ndjson_bodies(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    values = draw(st.lists(st.dictionaries(st.text(max_size=5), st.text() | st.integers() | st.none()), max_size=8))
    lines = [json.dumps(v, ensure_ascii=draw(st.booleans())).encode() for v in values]
    parts: list[bytes] = []
    for line in lines:
        parts.append(draw(st.sampled_from([b"", b"\n", b"\r\n", b" \n"])))
        parts.append(line + draw(st.sampled_from([b"\n", b"\r\n"])))
    drop_last_newline = draw(st.booleans())
    if lines and drop_last_newline:
        parts[-1] = parts[-1].rstrip(b"\r\n")  # Ollama-style last line may lack its newline
    return b"".join(parts), lines


@settings(max_examples=300, deadline=None)
@given(generated=ndjson_bodies(), data=st.data())
def test_generated_json_lines_come_back_exactly(generated: tuple[bytes, list[bytes]], data: st.DataObject) -> None:
    body, lines = generated
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=len(body) + 1))
    assert split_chunks(split_at(body, cuts)) == lines


# --- edge cases ---------------------------------------------------------------------------------------------


def test_crlf_split_between_feeds_at_every_position() -> None:
    body = b'{"a":1}\r\n\r\n{"b":"x\\r\\n"}\r\n \r\n{"c":3}\r\n'
    expected = [b'{"a":1}', b'{"b":"x\\r\\n"}', b'{"c":3}']
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            assert split_chunks([body[:i], body[i:j], body[j:]]) == expected, (i, j)


def test_a_line_is_returned_as_soon_as_its_newline_arrives() -> None:
    splitter = NDJSONSplitter()
    assert splitter.feed(b'{"a":1}\r') == []
    assert splitter.feed(b"\n") == [b'{"a":1}']
    assert splitter.feed(b"\n\n  \n\t\r\n") == []
    assert splitter.feed(b'{"b":2}\n{"c"') == [b'{"b":2}']
    assert splitter.finish() == [b'{"c"']


def test_finish_returns_nothing_after_a_terminated_or_blank_tail() -> None:
    for tail in [b"", b"\n", b"  ", b" \r", b"\r"]:
        splitter = NDJSONSplitter()
        assert splitter.feed(b'{"a":1}\n' + tail) == [b'{"a":1}']
        assert splitter.finish() == []


def test_lone_cr_inside_a_line_is_kept_and_a_trailing_one_at_eof_is_dropped() -> None:
    splitter = NDJSONSplitter()
    assert splitter.feed(b'{"a":\r1}\n{"b":2}\r') == [b'{"a":\r1}']
    assert splitter.finish() == [b'{"b":2}']


def test_feed_after_finish_is_an_error() -> None:
    splitter = NDJSONSplitter()
    splitter.finish()
    with pytest.raises(WireError):
        splitter.feed(b"{}\n")


# --- size limit ---------------------------------------------------------------------------------------------


def test_line_of_exactly_the_limit_passes_even_with_crlf_split() -> None:
    limit = 50
    line = b"x" * limit
    assert split_chunks([line + b"\r", b"\n"], max_line_bytes=limit) == [line]
    assert split_chunks([line[:10], line[10:] + b"\r\n"], max_line_bytes=limit) == [line]
    assert split_chunks([line], max_line_bytes=limit) == [line]
    for chunks in ([line + b"x\n"], [line, b"x"], [line + b"\r", b"x\n"], [b"\n" + line + b"xx\n"]):
        with pytest.raises(FrameTooLarge):
            split_chunks(chunks, max_line_bytes=limit)


def test_oversized_line_raises_on_the_chunk_that_crosses_the_limit() -> None:
    limit = 64 * 1024
    splitter = NDJSONSplitter(max_line_bytes=limit)
    chunk = b"y" * 1000
    fed = 0
    with pytest.raises(FrameTooLarge):
        for _ in range(10_000):
            fed += len(chunk)
            splitter.feed(chunk)
    assert limit < fed <= limit + len(chunk) + 1
    with pytest.raises(CorruptFrame):
        splitter.feed(b"\n")


# --- robustness and cost ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400), data=st.data())
def test_random_bytes_with_a_small_limit_only_raise_frame_too_large(body: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=20))
    limit = 16
    try:
        lines = split_chunks(split_at(body, cuts), max_line_bytes=limit)
    except FrameTooLarge:
        assert any(len(line) > limit for line in body.split(b"\n"))
    else:
        assert lines == reference_lines(body)
        assert all(len(line) <= limit for line in lines)


def test_many_lines_in_one_feed_cost_linear_time() -> None:
    body = b'{"message":{"content":"x"},"done":false}\n' * 100_000  # 4 MB
    started = time.perf_counter()
    lines = split_chunks([body])
    elapsed = time.perf_counter() - started
    assert len(lines) == 100_000
    assert elapsed < 10, f"{elapsed:.1f}s for 100k lines in one feed"


def test_long_line_fed_one_byte_at_a_time_costs_linear_time() -> None:
    # About 0.5 s when linear; copying the pending line on every feed would take ~30 s.
    line = b'{"content":"' + b"abc\\n" * 200_000 + b'"}'
    body = line + b"\r\n"
    splitter = NDJSONSplitter()
    lines: list[bytes] = []
    started = time.perf_counter()
    for i in range(len(body)):
        lines += splitter.feed(body[i : i + 1])
    elapsed = time.perf_counter() - started
    assert lines == [line]
    assert elapsed < 10, f"{elapsed:.1f}s to feed {len(body)} bytes one at a time"
