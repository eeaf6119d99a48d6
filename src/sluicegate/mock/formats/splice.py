"""Helpers shared by the mock's provider formats: prompt size estimates and pre-built per-token events."""

from __future__ import annotations

from collections.abc import Callable

from sluicegate.mock.formats.base import rough_token_count
from sluicegate.mock.tokens import TokenSource


def text_length(node: object) -> int:
    """Characters of text anywhere under `text`/`content` keys (any provider's message shape)."""
    if isinstance(node, list):
        return sum(text_length(item) for item in node)
    if isinstance(node, dict):
        total = 0
        for key, value in node.items():
            if isinstance(value, str):
                total += len(value) if key in ("text", "content") else 0
            else:
                total += text_length(value)
        return total
    return 0


def prompt_tokens(*nodes: object) -> int:
    return rough_token_count(sum(text_length(node) for node in nodes))


class TokenEvents:
    """The bytes of each token's event, built once per cycle position: `make(json string literal) -> bytes`."""

    __slots__ = ("_events", "_last", "_source")

    def __init__(self, source: TokenSource, make: Callable[[bytes], bytes]) -> None:
        self._source = source
        self._events = [make(piece) for piece in source.cycle_json]
        self._last = make(source.last_json)

    def join(self, start: int, stop: int) -> bytes:
        """The events of tokens [start, stop); the reply's last token is the one without a trailing space."""
        events, period, count = self._events, self._source.period, self._source.count
        if stop < count:
            if stop - start == 1:
                return events[start % period]
            return b"".join([events[i % period] for i in range(start, stop)])
        return b"".join([events[i % period] for i in range(start, stop - 1)]) + self._last
