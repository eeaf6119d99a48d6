"""The content tokens a mock reply is made of.

A reply is `count` tokens drawn from a short cycle of strings; the last token drops its trailing space.
Tokens are pre-encoded as JSON string literals once per reply, so encoders splice bytes instead of
serialising per event.
"""

from __future__ import annotations

from typing import Final

import msgspec

from sluicegate.mock.behaviour import MockBehaviour

# Token i of the default reply is WORDS[i % len(WORDS)] followed by one space (none after the last token).
WORDS: Final[tuple[str, ...]] = (
    "The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "seven", "bright",
    "lanterns", "glow", "above", "a", "quiet", "harbour", "where", "old", "boats", "rest", "and", "gulls",
    "circle", "slowly", "in", "the", "warm", "evening", "air", "today.",
)  # fmt: skip

_PAD: Final = "."


def default_reply(count: int) -> str:
    """The full text of the default reply of `count` tokens (what a client reassembles)."""
    return TokenSource(tuple(word + " " for word in WORDS), count).text(count)


def _pad(token: str, size: int) -> str:
    """`token` cut or padded with dots to exactly `size` UTF-8 bytes (a cut never splits a character)."""
    raw = token.encode()
    if len(raw) >= size:
        token = raw[:size].decode(errors="ignore")
        raw = token.encode()
    return token + _PAD * (size - len(raw))


class TokenSource:
    """`count` tokens cycling over `cycle`; each token is available as text and as a JSON string literal."""

    __slots__ = ("count", "cycle", "cycle_json", "last", "last_json", "period")

    def __init__(self, cycle: tuple[str, ...], count: int, *, token_bytes: int | None = None) -> None:
        if count > 0 and not cycle:
            raise ValueError("a non-empty reply needs at least one token string")
        last = cycle[(count - 1) % len(cycle)].rstrip(" ") if count > 0 else ""
        if token_bytes is not None:
            cycle = tuple(_pad(token, token_bytes) for token in cycle)
            last = _pad(last, token_bytes)
        self.count = count
        self.cycle = cycle
        self.period = max(len(cycle), 1)
        self.last = last
        encode = msgspec.json.encode
        # Only the positions this reply actually reaches are encoded.
        self.cycle_json = [encode(token) for token in cycle[: min(len(cycle), count)]]
        self.last_json = encode(last)

    @classmethod
    def for_behaviour(cls, behaviour: MockBehaviour) -> TokenSource:
        if behaviour.text is not None:
            words = behaviour.text.split()
            return cls(tuple(word + " " for word in words), len(words), token_bytes=behaviour.token_bytes)
        cycle = tuple(word + " " for word in WORDS)
        return cls(cycle, behaviour.tokens, token_bytes=behaviour.token_bytes)

    def json(self, index: int) -> bytes:
        """Token `index` as a JSON string literal (quotes included)."""
        return self.last_json if index == self.count - 1 else self.cycle_json[index % self.period]

    def text(self, upto: int) -> str:
        """The concatenation of tokens [0, upto)."""
        if upto <= 0:
            return ""
        rounds, rest = divmod(upto, self.period)
        text = "".join(self.cycle) * rounds + "".join(self.cycle[:rest])
        if upto == self.count:
            text = text[: len(text) - len(self.cycle[(upto - 1) % self.period])] + self.last
        return text
