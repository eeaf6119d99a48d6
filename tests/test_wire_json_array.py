"""JSONArraySplitter: Gemini's streamed JSON array, split into elements however the bytes arrive."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate.wire.errors import CorruptFrame, FrameTooLarge, TruncatedStream, WireError
from sluicegate.wire.json_array import JSONArraySplitter

FIXTURES = Path(__file__).parent / "fixtures" / "gemini" / "json-array"
BOM = b"\xef\xbb\xbf"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({0, len(data), *cuts})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_all(chunks: Iterable[bytes], splitter: JSONArraySplitter | None = None) -> list[bytes]:
    splitter = splitter or JSONArraySplitter()
    frames: list[bytes] = []
    for chunk in chunks:
        frames += splitter.feed(chunk)
    return frames


def split_whole(body: bytes) -> list[bytes]:
    splitter = JSONArraySplitter()
    frames = splitter.feed(body)
    splitter.finish()
    return frames


def texts(frames: list[bytes]) -> list[str]:
    return [json.loads(f)["candidates"][0]["content"]["parts"][0]["text"] for f in frames]


# A complete body built from Kong's first and last network reads of a real stream (6 elements).
KONG_COMPLETE = fixture("kong-first-network-read.part") + fixture("kong-last-network-read.part")
KONG_SPLIT_PARTS = [fixture(f"kong-split-3-parts.part{i}") for i in (1, 2, 3)]
LOUTER = fixture("louter-gemini25-flash-complete.json")


# --- real recorded streams ----------------------------------------------------------------------------------


def test_louter_complete_body_gives_its_single_element_verbatim() -> None:
    frames = split_whole(LOUTER)
    assert len(frames) == 1
    assert b"[" + frames[0] + b"\n]" == LOUTER
    element = json.loads(frames[0])
    assert element["responseId"] == "wnkhadHIAcOY0-kPiLrNmAI"
    assert element["usageMetadata"]["totalTokenCount"] == 82


def test_kong_split_three_parts_yield_elements_then_report_truncation() -> None:
    splitter = JSONArraySplitter()
    per_part = [splitter.feed(part) for part in KONG_SPLIT_PARTS]
    # The first two reads end inside an element, the last one right after element 4.
    assert [len(frames) for frames in per_part] == [1, 1, 2]
    frames = [f for part in per_part for f in part]
    assert texts(frames)[:2] == [
        "The theory of relativity is actually",
        " two theories by Albert Einstein: **special relativity** and",
    ]
    assert [json.loads(f)["usageMetadata"]["totalTokenCount"] for f in frames] == [7, 23, 39, 71]
    # The recording is a prefix of the body: no closing "]".
    with pytest.raises(TruncatedStream):
        splitter.finish()


def test_kong_first_network_read_is_an_unterminated_prefix() -> None:
    splitter = JSONArraySplitter()
    frames = splitter.feed(fixture("kong-first-network-read.part"))
    assert texts(frames)[:2] == [
        "The",
        " theory of relativity is actually two theories by Albert Einstein: **special relativity** and",
    ]
    assert len(frames) == 4
    with pytest.raises(TruncatedStream):
        splitter.finish()


def test_kong_first_and_last_reads_make_a_complete_array() -> None:
    splitter = JSONArraySplitter()
    first = splitter.feed(fixture("kong-first-network-read.part"))
    # The last read starts with the separator: ",{".
    last = splitter.feed(fixture("kong-last-network-read.part"))
    splitter.finish()
    assert (len(first), len(last)) == (4, 2)
    assert [json.loads(f) for f in first + last] == json.loads(KONG_COMPLETE)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_real_streams_split_anywhere_give_the_same_elements(data: st.DataObject) -> None:
    body = data.draw(st.sampled_from([KONG_COMPLETE, LOUTER, BOM + LOUTER]))
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=30))
    splitter = JSONArraySplitter()
    assert feed_all(split_at(body, cuts), splitter) == split_whole(body)
    splitter.finish()


# --- generated arrays ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)
whitespace = st.text(alphabet=" \t\r\n", max_size=3)


@st.composite
def json_array_bodies(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A body and the exact bytes of each of its elements, with arbitrary whitespace between tokens."""
    indent = draw(st.sampled_from([None, 0, 2]))
    ensure_ascii = draw(st.booleans())
    elements = [
        json.dumps(value, indent=indent, ensure_ascii=ensure_ascii).encode()
        for value in draw(st.lists(json_values, max_size=6))
    ]
    parts = [draw(st.sampled_from([b"", BOM])), draw(whitespace).encode(), b"["]
    for i, element in enumerate(elements):
        if i:
            parts += [draw(whitespace).encode(), b",", draw(whitespace).encode()]
        else:
            parts.append(draw(whitespace).encode())
        parts.append(element)
    parts += [draw(whitespace).encode(), b"]", draw(whitespace).encode()]
    return b"".join(parts), elements


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), generated=json_array_bodies())
def test_generated_arrays_split_anywhere_give_exact_element_bytes(
    data: st.DataObject, generated: tuple[bytes, list[bytes]]
) -> None:
    body, elements = generated
    assert split_whole(body) == elements
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=len(body) + 1))
    splitter = JSONArraySplitter()
    assert feed_all(split_at(body, cuts), splitter) == elements
    splitter.finish()
    assert [json.loads(e) for e in elements] == json.loads(body.removeprefix(BOM))


# --- edge cases ---------------------------------------------------------------------------------------------

TRICKY = (
    b'[{"a":"x\\\\\\"}{[]\\\\","b":["}",{"c":"\\\\"}],"d":"\\u005d\\""},'
    b' "]\\"[,", [[1,[2]],[]] , -1.5e+3,true,null,false, {}]'
)
TRICKY_ELEMENTS = [
    b'{"a":"x\\\\\\"}{[]\\\\","b":["}",{"c":"\\\\"}],"d":"\\u005d\\""}',
    b'"]\\"[,"',
    b"[[1,[2]],[]]",
    b"-1.5e+3",
    b"true",
    b"null",
    b"false",
    b"{}",
]


def test_escapes_and_brackets_inside_strings_split_at_every_pair_of_positions() -> None:
    assert split_whole(TRICKY) == TRICKY_ELEMENTS
    assert [json.loads(e) for e in TRICKY_ELEMENTS] == json.loads(TRICKY)
    n = len(TRICKY)
    for i in range(n + 1):
        for j in range(i, n + 1):
            splitter = JSONArraySplitter()
            assert feed_all([TRICKY[:i], TRICKY[i:j], TRICKY[j:]], splitter) == TRICKY_ELEMENTS, (i, j)
            splitter.finish()


def test_one_byte_at_a_time() -> None:
    splitter = JSONArraySplitter()
    assert feed_all([TRICKY[i : i + 1] for i in range(len(TRICKY))], splitter) == TRICKY_ELEMENTS
    splitter.finish()


def test_an_element_is_returned_as_soon_as_its_last_byte_arrives() -> None:
    splitter = JSONArraySplitter()
    assert splitter.feed(b'[{"a": [1, {"b": "}"}]') == []
    assert splitter.feed(b"}") == [b'{"a": [1, {"b": "}"}]}']
    assert splitter.feed(b", 12") == []  # a number ends only at the next delimiter
    assert splitter.feed(b"]") == [b"12"]
    splitter.finish()


def test_nested_arrays_and_empty_array() -> None:
    assert split_whole(b"[[[]],[[1],[2,[3]]],[]]") == [b"[[]]", b"[[1],[2,[3]]]", b"[]"]
    assert split_whole(b"[]") == []
    assert split_whole(b" \r\n\t[ \n ] \n") == []


def test_very_deep_nesting_is_split_like_shallow_nesting() -> None:
    deep = b"[" * 5000 + b'"]"' + b"]" * 5000
    body = b"[" + deep + b"," + deep + b"]"
    assert split_whole(body) == [deep, deep]
    assert feed_all(split_at(body, range(0, len(body), 7))) == [deep, deep]


def test_invalid_json_inside_an_element_is_framed_not_judged() -> None:
    # Bracket and string structure decide the frame; the element's own JSON is the decoder's business.
    assert split_whole(b'[{"a":}, {nope: [1,,]}, {"b": "\\q"}]') == [b'{"a":}', b"{nope: [1,,]}", b'{"b": "\\q"}']


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 4])
def test_bom_is_skipped_even_when_split(cut: int) -> None:
    body = BOM + b'[{"a":1}]'
    splitter = JSONArraySplitter()
    assert feed_all([body[:cut], body[cut:]], splitter) == [b'{"a":1}']
    splitter.finish()


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":1}',  # no array
        b" \xef\xbb\xbf[]",  # a BOM is only allowed first
        b"\xef\xbb[]",  # half a BOM
        b"\xef[]",
        b"[]]",  # junk after the array
        b"[] x",
        b"[]\x00",
        b"[{} {}]",  # missing comma
        b"[,{}]",  # leading comma
        b"[{},,{}]",  # double comma
        b"[{},]",  # trailing comma
        b"[}]",  # stray closer
        b"[:]",
        b"[tru e]",  # not a bare value
        b"[1x]",
        b"[-]",
    ],
)
def test_malformed_arrays_raise_corrupt_frame(body: bytes) -> None:
    splitter = JSONArraySplitter()
    with pytest.raises(CorruptFrame):
        splitter.feed(body)
        splitter.finish()


@pytest.mark.parametrize(
    "body",
    [b"", b"  ", b"\xef\xbb", b"[", b'[{"a"', b'[{"a":"\\', b"[{}", b"[{},", b"[{}, 12", b'["abc', b"[[1]"],
)
def test_input_ending_before_the_closing_bracket_is_truncated(body: bytes) -> None:
    splitter = JSONArraySplitter()
    splitter.feed(body)
    with pytest.raises(TruncatedStream):
        splitter.finish()


def test_whitespace_after_the_array_is_allowed() -> None:
    splitter = JSONArraySplitter()
    assert splitter.feed(b"[1]") == [b"1"]
    assert splitter.feed(b" \r\n") == []
    splitter.finish()


def test_a_failed_splitter_stays_failed() -> None:
    splitter = JSONArraySplitter()
    with pytest.raises(CorruptFrame):
        splitter.feed(b"[{} {}]")
    with pytest.raises(WireError):
        splitter.feed(b"]")
    with pytest.raises(WireError):
        splitter.finish()


# --- size limit ---------------------------------------------------------------------------------------------


def test_element_of_exactly_the_limit_passes_and_one_more_byte_fails() -> None:
    limit = 100
    exact = b'"' + b"x" * (limit - 2) + b'"'
    assert JSONArraySplitter(max_frame_bytes=limit).feed(b"[" + exact + b"]") == [exact]
    with pytest.raises(FrameTooLarge):
        JSONArraySplitter(max_frame_bytes=limit).feed(b'["' + b"x" * (limit - 1) + b'"]')


def test_oversized_element_raises_as_soon_as_it_crosses_the_limit() -> None:
    limit = 64 * 1024
    chunk = b'"aaaaaaaa\\"{' * 100  # 1,200 bytes of a string that never ends
    splitter = JSONArraySplitter(max_frame_bytes=limit)
    assert splitter.feed(b'[{"text":') == []
    fed = len(b'{"text":')
    with pytest.raises(FrameTooLarge):
        for _ in range(10_000):
            fed += len(chunk)
            splitter.feed(chunk)
    # It raised on the chunk that crossed the limit, so no more than one chunk past the limit was ever held.
    assert limit < fed <= limit + len(chunk)


def test_oversized_complete_element_in_one_feed_raises() -> None:
    splitter = JSONArraySplitter(max_frame_bytes=1000)
    assert splitter.feed(b"[1, [0") == [b"1"]
    with pytest.raises(FrameTooLarge):
        splitter.feed(b"," * 1000 + b"]]")


# --- robustness ---------------------------------------------------------------------------------------------


PREFIXES = st.sampled_from([b"", b"[", b'[{"a":"', BOM + b"[{"])


@settings(max_examples=400, deadline=None)
@given(prefix=PREFIXES, junk=st.binary(max_size=200), data=st.data())
def test_random_bytes_only_raise_wire_errors(prefix: bytes, junk: bytes, data: st.DataObject) -> None:
    body = prefix + junk
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=10))
    splitter = JSONArraySplitter(max_frame_bytes=64)
    try:
        for chunk in split_at(body, cuts):
            splitter.feed(chunk)
        splitter.finish()
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(generated=json_array_bodies(), data=st.data())
def test_mutated_arrays_only_raise_wire_errors(generated: tuple[bytes, list[bytes]], data: st.DataObject) -> None:
    body = bytearray(generated[0])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body)))
        action = data.draw(st.sampled_from(["insert", "replace", "delete"]))
        byte = data.draw(st.sampled_from(list(b'[]{}",\\ :x0\xef')))
        if action == "insert":
            body.insert(at, byte)
        elif at < len(body):
            if action == "replace":
                body[at] = byte
            else:
                del body[at]
    splitter = JSONArraySplitter()
    try:
        for chunk in split_at(bytes(body), data.draw(st.lists(st.integers(0, len(body)), max_size=8))):
            for frame in splitter.feed(chunk):
                assert isinstance(frame, bytes) and frame
        splitter.finish()
    except WireError:
        pass


def test_many_small_elements_in_one_feed_cost_linear_time() -> None:
    body = b"[" + b",".join([b'{"t":"x"}'] * 200_000) + b"]"  # 2 MB
    started = time.perf_counter()
    frames = split_whole(body)
    elapsed = time.perf_counter() - started
    assert len(frames) == 200_000
    assert elapsed < 10, f"{elapsed:.1f}s for 200k elements in one feed"


def test_large_element_fed_one_byte_at_a_time_costs_linear_time() -> None:
    # About 1 s when linear; copying the pending element per feed takes ~30 s, rescanning it far longer.
    inner = json.dumps({"text": 'ab"c{}[]\\ ' * 70_000, "nested": [[1, {"k": "v"}]] * 9_000}).encode()
    body = b"[" + inner + b"]"
    assert len(body) > 990_000
    splitter = JSONArraySplitter()
    frames: list[bytes] = []
    started = time.perf_counter()
    for i in range(len(body)):
        frames += splitter.feed(body[i : i + 1])
    elapsed = time.perf_counter() - started
    splitter.finish()
    assert frames == [inner]
    assert elapsed < 10, f"{elapsed:.1f}s to feed {len(body)} bytes one at a time"
