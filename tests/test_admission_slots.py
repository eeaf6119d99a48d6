"""Slots are released exactly once, and a late release of one attempt's slot never frees another attempt's."""

from __future__ import annotations

import asyncio

from sluicegate.gateway.admission import Slots
from sluicegate.state.memory import MemoryBackend


async def test_release_is_idempotent_and_only_for_the_matching_holder() -> None:
    backend = MemoryBackend()
    slots = Slots()
    assert await backend.acquire_slot("deployment:d", 1, "req:1", 0)
    slots.add(backend, "deployment:d", "req:1")
    slots.release("deployment:d", "req:1")  # the first attempt failed: its release runs as a task
    slots.release("deployment:d", "req:1")  # a second call must not release anything else
    # The retry's acquire, with its own holder, waits for the first release instead of "already holding" it.
    assert await backend.acquire_slot("deployment:d", 1, "req:2", 1.0)
    slots.add(backend, "deployment:d", "req:2")
    await asyncio.sleep(0.01)  # let any stray release task run
    assert await backend.in_use("deployment:d") == 1  # the retry still holds its slot
    assert not await backend.acquire_slot("deployment:d", 1, "other", 0)
    slots.release()
    await asyncio.sleep(0.01)
    assert await backend.in_use("deployment:d") == 0
