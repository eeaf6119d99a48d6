"""Per-event cost of translating each provider's stream into OpenAI chunks, against OpenAI pass-through.

Run: .venv/bin/pytest benchmarks/test_bench_translation.py --benchmark-only -q -s
Each round feeds a whole recorded stream to a fresh codec in network-sized pieces and calls finish().
``us_per_event`` (extra_info and the printed summary) is the mean round time divided by the provider events.
Two read patterns: ``per_event`` (one event per read, as a token-paced stream arrives) and ``1400b``
(fixed 1,400-byte reads, about one TCP segment, cutting events anywhere).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sluicegate.providers.anthropic import AnthropicCodec
from sluicegate.providers.base import StreamCodec
from sluicegate.providers.bedrock import BedrockCodec
from sluicegate.providers.gemini import GeminiCodec
from sluicegate.providers.ollama import OllamaCodec
from sluicegate.providers.openai import OpenAIPassthroughCodec
from sluicegate.types import Endpoint, GatewayRequest

FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures"
SEGMENT = 1400
REQ = GatewayRequest(id="bench", endpoint=Endpoint.CHAT, body={}, model="public", stream=True,
                     client_wants_usage=True, arrived=0.0, arrived_wall=1_700_000_000.0)


def _sse_events(body: bytes) -> list[bytes]:
    sep = b"\r\n\r\n" if b"\r\n\r\n" in body else b"\n\n"
    parts = body.split(sep)
    return [p + sep for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _frames(body: bytes) -> list[bytes]:
    """One AWS event-stream message per read (each starts with its total length)."""
    out, pos = [], 0
    while pos < len(body):
        size = int.from_bytes(body[pos : pos + 4], "big")
        out.append(body[pos : pos + size])
        pos += size
    return out


def _lines(body: bytes) -> list[bytes]:
    return [line + b"\n" for line in body.splitlines() if line.strip()]


CASES: dict[str, tuple[Callable[[], StreamCodec], Path, Callable[[bytes], list[bytes]]]] = {
    "passthrough-openai": (lambda: OpenAIPassthroughCodec(Endpoint.CHAT, True, 1 << 20),
                           FIXTURES / "openai-chat/envoy-search-preview-web-search.sse", _sse_events),
    "anthropic": (lambda: AnthropicCodec(REQ, 1 << 20), FIXTURES / "anthropic/prism-basic-text.sse", _sse_events),
    "gemini-sse": (lambda: GeminiCodec(REQ, 1 << 20), FIXTURES / "gemini/sse/louter-gemini25-flash-long-lf-only.sse",
                   _sse_events),
    "bedrock": (lambda: BedrockCodec(REQ, 1 << 20), FIXTURES / "bedrock/pydantic-ai-nova-micro-text.bin", _frames),
    "ollama": (lambda: OllamaCodec(REQ, 1 << 20), FIXTURES / "ollama/prism-granite3-basic-text.ndjson", _lines),
}
RESULTS: dict[str, float] = {}


def _run(make: Callable[[], StreamCodec], reads: list[bytes]) -> int:
    codec = make()
    total = 0
    for data in reads:
        total += len(codec.feed(data))
    return total + len(codec.finish())


@pytest.mark.parametrize("pattern", ["per_event", "1400b"])
@pytest.mark.parametrize("case", list(CASES))
def test_translation_cost(benchmark: Any, case: str, pattern: str) -> None:
    make, path, split = CASES[case]
    body = path.read_bytes()
    events = split(body)
    assert b"".join(events) == body
    reads = events if pattern == "per_event" else [body[i : i + SEGMENT] for i in range(0, len(body), SEGMENT)]
    assert _run(make, reads) > 0
    benchmark(_run, make, reads)
    stats = benchmark.stats.stats if benchmark.stats is not None else None
    if stats is not None:
        per_event = stats.mean / len(events) * 1e6
        benchmark.extra_info["us_per_event"] = round(per_event, 3)
        benchmark.extra_info["events"] = len(events)
        RESULTS[f"{case} {pattern}"] = per_event
        print(f"\n{case:>20} {pattern:>9}: {per_event:6.2f} us/event ({len(events)} events)")
