"""What the mock upstream should do for one request: the validated `"mock"` object of the request JSON.

Server-wide defaults are a `MockBehaviour` too; a request's `mock` object overrides them field by field.
Every bad value is rejected with a message naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

MAX_DELAY_SECONDS: Final = 3600.0
MAX_TOKEN_BYTES: Final = 16 * 1024 * 1024
MAX_TAG_LENGTH: Final = 256


class MockValueError(ValueError):
    """The `mock` object cannot be honoured; `param` names the offending field (OpenAI error `param`)."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(message)


def _bad(field: str, value: object, allowed: str) -> MockValueError:
    return MockValueError(f"mock.{field}", f"invalid mock.{field} = {_render(value)}: {allowed}")


def _render(value: object) -> str:
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(field: str, value: object) -> int:
    if not _is_int(value) or value < 0:  # type: ignore[operator]
        raise _bad(field, value, "must be an integer >= 0")
    return value  # type: ignore[return-value]


def _optional_count(field: str, value: object) -> int | None:
    return None if value is None else _count(field, value)


def _seconds(field: str, value: object) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_DELAY_SECONDS
    ):
        raise _bad(field, value, f"must be a number of seconds between 0 and {MAX_DELAY_SECONDS:g}")
    return float(value)


def _optional_seconds(field: str, value: object) -> float | None:
    return None if value is None else _seconds(field, value)


def _status(field: str, value: object) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 400 <= value <= 599:  # type: ignore[operator]
        raise _bad(field, value, "must be an integer HTTP status between 400 and 599")
    return value  # type: ignore[return-value]


def _optional_bool(field: str, value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise _bad(field, value, "must be true, false or null")
    return value


def _token_bytes(field: str, value: object) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= MAX_TOKEN_BYTES:  # type: ignore[operator]
        raise _bad(field, value, f"must be an integer between 1 and {MAX_TOKEN_BYTES}")
    return value  # type: ignore[return-value]


def _optional_text(field: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _bad(field, value, "must be a string or null")
    return value


def _finish_reason(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(field, value, 'must be a non-empty string such as "stop" or "length"')
    return value


def _tag(field: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TAG_LENGTH:
        raise _bad(field, value, f"must be a string of 1 to {MAX_TAG_LENGTH} characters")
    return value


_VALIDATORS: Final[dict[str, Callable[[str, object], Any]]] = {
    "tokens": _count,
    "interval": _seconds,
    "headers_delay": _seconds,
    "first_delay": _seconds,
    "status": _status,
    "retry_after": _optional_seconds,
    "error_after": _optional_count,
    "reset_after": _optional_count,
    "stall_after": _optional_count,
    "usage": _optional_bool,
    "token_bytes": _token_bytes,
    "text": _optional_text,
    "finish_reason": _finish_reason,
    "tag": _tag,
}


@dataclasses.dataclass(frozen=True, slots=True)
class MockBehaviour:
    """One request's script. Fault fields (`error_after`, `reset_after`, `stall_after`) count content tokens;
    a fault at N >= the number of tokens fires after the last token, in place of the normal end."""

    tokens: int = 20
    interval: float = 0.0
    headers_delay: float = 0.0
    first_delay: float = 0.0
    status: int | None = None
    retry_after: float | None = None
    error_after: int | None = None
    reset_after: int | None = None
    stall_after: int | None = None
    usage: bool | None = None  # None: follow the request's stream_options.include_usage
    token_bytes: int | None = None
    text: str | None = None
    finish_reason: str = "stop"
    tag: str | None = None

    def __post_init__(self) -> None:
        for name, validate in _VALIDATORS.items():
            object.__setattr__(self, name, validate(name, getattr(self, name)))

    def with_overrides(self, overrides: object) -> MockBehaviour:
        """This behaviour with the fields of a request's `mock` object applied; raises MockValueError."""
        if not isinstance(overrides, Mapping):
            raise MockValueError("mock", f"invalid mock = {_render(overrides)}: must be a JSON object")
        for key in overrides:
            if key not in _VALIDATORS:
                raise MockValueError(
                    f"mock.{key}", f"unknown field mock.{key}; allowed fields: {', '.join(_VALIDATORS)}"
                )
        return dataclasses.replace(self, **overrides) if overrides else self
