"""Durations in config files: `250ms`, `5s`, `30m`, `1h`, `1m30s` or a bare number of seconds."""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Return seconds. Raises ValueError with a message that says what is allowed."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 5s, 30m or 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        if not math.isfinite(value):
            raise ValueError("a duration must be a finite number of seconds")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError("expected a duration such as 250ms, 5s, 30m, 1h or 1m30s") from None
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        if not math.isfinite(seconds):
            raise ValueError("a duration must be a finite number of seconds")
        return seconds
    raise ValueError("expected a duration such as 250ms, 5s, 30m or 1h")
