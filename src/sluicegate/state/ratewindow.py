"""Sliding-window-counter arithmetic, shared by the memory backend and mirrored by the Redis Lua script.

Time is cut into fixed windows of `window` seconds; each key keeps the count of the current and the previous
window. A hit at `elapsed` seconds into the current window sees

    estimate = previous * (1 - elapsed / window) + current

i.e. the previous window's hits are assumed evenly spread and only the part still inside the sliding window
counts. The hit is allowed (and counted) when estimate + 1 <= limit; refused hits are not counted. Memory is O(1)
per key (unlike a log of timestamps); within any single fixed window at most `limit` hits are allowed.
"""

from __future__ import annotations

import math


def window_index(now: float, window: float) -> int:
    return math.floor(now / window)


def rolled(index: int, previous: float, current: float, new_index: int) -> tuple[float, float]:
    """(previous, current) counts once time has moved from window `index` to window `new_index`."""
    if new_index == index:
        return previous, current
    if new_index == index + 1:
        return current, 0.0
    if new_index > index + 1:
        return 0.0, 0.0
    return previous, current  # the clock went backwards: keep counting in the window we have


def decide(previous: float, current: float, elapsed: float, window: float, limit: int) -> tuple[bool, float]:
    """(allowed, retry_after_s) for one more hit; retry_after_s assumes no other hit arrives meanwhile."""
    estimate = previous * (1.0 - elapsed / window) + current
    if estimate + 1.0 <= limit:
        return True, 0.0
    if current + 1.0 <= limit:
        # Still possible in this window once enough of the previous window has slid out.
        wait = window * (1.0 - (limit - 1.0 - current) / previous) - elapsed
        return False, max(wait, 0.0)
    # Only in the next window, once enough of this window (then the previous one) has slid out.
    wait_next = window * (1.0 - (limit - 1.0) / current)
    return False, (window - elapsed) + max(wait_next, 0.0)
