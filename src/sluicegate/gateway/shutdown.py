"""Telling a shutdown apart from a client disconnect: both cancel a request's task. The server marks the tasks it
cancels when the drain's grace period is over; the gateway asks here before deciding how a request ended."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

_cancelled_for_shutdown: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def mark_cancelled_for_shutdown(task: asyncio.Task[Any]) -> None:
    _cancelled_for_shutdown.add(task)


def cancelled_for_shutdown(task: asyncio.Task[Any] | None) -> bool:
    """True when `task` was cancelled because the shutdown grace period ran out (not by a client disconnect)."""
    return task is not None and task in _cancelled_for_shutdown
