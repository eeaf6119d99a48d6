"""Per-frame cost of the sans-IO wire codecs on recorded streams.

Run: .venv/bin/pytest benchmarks/test_bench_wire_codecs.py --benchmark-only -q -s  (pyproject's addopts
--benchmark-skip wins over --benchmark-enable; --benchmark-only overrides it).
Each benchmark decodes a whole recorded stream with a fresh decoder; ``us_per_frame`` in extra_info (and in
the printed summary) is the mean time divided by the number of frames. Two read patterns:
``per_event`` - one frame per read, as a token-paced stream arrives; ``1400b`` - fixed 1,400-byte reads
(about one TCP segment), which cut frames at arbitrary points.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from sluicegate.wire.aws_eventstream import EventStreamDecoder
from sluicegate.wire.json_array import JSONArraySplitter
from sluicegate.wire.ndjson import NDJSONSplitter

FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures"
SEGMENT = 1400


class _Decoder(Protocol):
    def feed(self, data: bytes) -> Sequence[object]: ...


def fixed_reads(body: bytes, size: int = SEGMENT) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def gemini_body() -> tuple[bytes, list[bytes]]:
    """Six real Gemini elements (Kong's recording) repeated to 60, framed the way Gemini frames them."""
    real = (FIXTURES / "gemini/json-array/kong-first-network-read.part").read_bytes()
    real += (FIXTURES / "gemini/json-array/kong-last-network-read.part").read_bytes()
    elements = JSONArraySplitter().feed(real)
    repeated = elements * 10
    reads = [b"[" + repeated[0]] + [b"\n,\n" + e for e in repeated[1:]]
    reads[-1] += b"\n]"
    return b"".join(reads), reads


def ndjson_body() -> tuple[bytes, list[bytes]]:
    body = (FIXTURES / "ollama/prism-gpt-oss-thinking.ndjson").read_bytes()
    return body, body.splitlines(keepends=True)


def bedrock_body() -> tuple[bytes, list[bytes]]:
    body = (FIXTURES / "bedrock/pydantic-ai-nova-micro-text.bin").read_bytes()
    reads, pos = [], 0
    while pos < len(body):
        (total,) = struct.unpack_from(">I", body, pos)
        reads.append(body[pos : pos + total])
        pos += total
    return body, reads


CODECS: dict[str, tuple[Callable[[], _Decoder], Callable[[], tuple[bytes, list[bytes]]]]] = {
    "gemini_json_array": (JSONArraySplitter, gemini_body),
    "ollama_ndjson": (NDJSONSplitter, ndjson_body),
    "bedrock_eventstream": (EventStreamDecoder, bedrock_body),
}


def run(make: Callable[[], _Decoder], reads: list[bytes]) -> int:
    decoder = make()
    frames = 0
    for read in reads:
        frames += len(decoder.feed(read))
    return frames


@pytest.mark.parametrize("pattern", ["per_event", "1400b"])
@pytest.mark.parametrize("codec", sorted(CODECS))
def test_codec_cost_per_frame(benchmark: Any, codec: str, pattern: str) -> None:
    make, load = CODECS[codec]
    body, per_event = load()
    reads = per_event if pattern == "per_event" else fixed_reads(body)
    benchmark.group = f"wire {pattern}"
    frames = benchmark(run, make, reads)
    assert frames == len(per_event)
    if benchmark.stats is not None:  # None when benchmarks are skipped/disabled
        us_per_frame = benchmark.stats.stats.mean / frames * 1e6
        benchmark.extra_info.update(frames=frames, reads=len(reads), us_per_frame=round(us_per_frame, 3))
        print(f"\n{codec} {pattern}: {frames} frames in {len(reads)} reads, {us_per_frame:.2f} us/frame")
