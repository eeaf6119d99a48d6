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
    slots.release("deployment:d", "req:1")  # the first attempt failed
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


async def test_an_in_process_slot_is_free_as_soon_as_it_is_released() -> None:
    """No task per release for the memory backend: the slot is free before anything else runs (a task would leave
    it held until the loop's next turn)."""
    backend = MemoryBackend()
    slots = Slots()
    assert await backend.acquire_slot("worker", 1, "req:1", 0)
    slots.add(backend, "worker", "req:1")
    slots.release()
    assert backend.holds_slot("worker", "req:1") is False
    assert await backend.acquire_slot("worker", 1, "req:2", 0)
