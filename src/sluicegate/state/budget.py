"""Retry-budget arithmetic, shared by the memory backend and mirrored by the Redis Lua script.

A token bucket per deployment pool (Finagle's deposit/withdraw budget with gRPC A6's "no queueing"):
- every request deposits `ratio` tokens (once, when it starts);
- every retry withdraws 1 token, and only if a whole token is there (never blocks, never goes negative);
- the balance also refills `min_per_second` tokens per second, so a few retries per second are always possible;
- the balance is capped at `capacity(min_per_second)` = max(10, 10 * min_per_second), so a quiet period cannot
  bank an unbounded retry storm;
- a new (or idle for IDLE_RESET_S) budget starts with one second of floor, `min(min_per_second, capacity)`,
  not full: a freshly started fleet cannot open with a burst of `capacity` retries.

Hence over any period of length T in which R requests deposit, withdrawals <= R * ratio + min_per_second * T
+ capacity (the initial balance is at most the capacity).
"""

from __future__ import annotations

IDLE_RESET_S = 3600.0
"""A budget untouched for this long starts again from its initial balance (Redis expires the key then)."""


def capacity(min_per_second: float) -> float:
    return max(10.0, 10.0 * min_per_second)


def initial_balance(min_per_second: float) -> float:
    return min(min_per_second, capacity(min_per_second))


def refilled(balance: float, elapsed_s: float, min_per_second: float) -> float:
    """The balance after `elapsed_s` seconds of floor refill (time going backwards refills nothing)."""
    if elapsed_s <= 0:
        return balance
    return min(capacity(min_per_second), balance + elapsed_s * min_per_second)


def deposited(balance: float, ratio: float, min_per_second: float, requests: int = 1) -> float:
    return min(capacity(min_per_second), balance + ratio * requests)
