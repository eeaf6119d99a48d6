"""Slots are released exactly once, a late release of one attempt's slot never frees another attempt's, and a request
waiting for several deployments ends up with one slot at most."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from sluicegate.gateway.admission import Admission, Slots
from sluicegate.observe.metrics import Metrics
from sluicegate.state.base import StateUnavailable
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


async def test_a_request_queued_for_several_deployments_keeps_one_slot_and_hands_the_others_on() -> None:
    """Both deployments free a slot in the same moment: the longest waiter is offered both, keeps the first one in
    its order and hands the other on to the next waiter; nothing stays held when they end, and a waiter that is
    cancelled takes no slot with it."""
    backend = MemoryBackend()
    metrics = Metrics(CollectorRegistry())
    admission = Admission(backend, metrics, max_streams=0)
    wanted = [("a", 1), ("b", 1)]
    assert await backend.acquire_slot("deployment:a", 1, "x", 0)
    assert await backend.acquire_slot("deployment:b", 1, "y", 0)
    first = asyncio.create_task(admission.wait_for_any_deployment(wanted, "w1", 5.0))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(admission.wait_for_any_deployment(wanted, "w2", 5.0))
    third = asyncio.create_task(admission.wait_for_any_deployment(wanted, "w3", 5.0))
    await asyncio.sleep(0.01)
    third.cancel()
    await asyncio.gather(third, return_exceptions=True)
    await backend.release_slot("deployment:a", "x")
    await backend.release_slot("deployment:b", "y")
    assert await asyncio.wait_for(first, 1.0) == 0  # offered a and b; keeps a
    assert await asyncio.wait_for(second, 1.0) == 1  # gets b, handed on by w1
    await asyncio.sleep(0.01)
    assert backend.holds_slot("deployment:a", "w1") and backend.holds_slot("deployment:b", "w2")
    assert await backend.in_use("deployment:a") == 1 and await backend.in_use("deployment:b") == 1
    await backend.release_slot("deployment:a", "w1")
    await backend.release_slot("deployment:b", "w2")
    assert await backend.in_use("deployment:a") == 0 and await backend.in_use("deployment:b") == 0
    gone = metrics.rejections.labels("deployment", "a", "client_gone")._value.get()
    assert gone == 1  # the cancelled waiter, counted once although it waited in two queues


async def test_waiting_for_several_deployments_gives_up_at_the_deadline() -> None:
    backend = MemoryBackend()
    admission = Admission(backend, Metrics(CollectorRegistry()), max_streams=0)
    assert await backend.acquire_slot("deployment:a", 1, "x", 0)
    assert await backend.acquire_slot("deployment:b", 1, "y", 0)
    assert await admission.wait_for_any_deployment([("a", 1), ("b", 1)], "w", 0.1) is None
    await asyncio.sleep(0.01)
    assert not backend.holds_slot("deployment:a", "w") and not backend.holds_slot("deployment:b", "w")


class _OneKeyFails(MemoryBackend):
    """In-process slots, except that waiting for deployment "a" ends in StateUnavailable once `a_fails` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.a_fails = asyncio.Event()

    async def acquire_slot(self, key: str, cap: int, holder: str, timeout: float) -> bool:  # noqa: ASYNC109
        if key == "deployment:a" and timeout > 0:
            await self.a_fails.wait()
            raise StateUnavailable("deployment a's shared state failed")
        return await super().acquire_slot(key, cap, holder, timeout)


async def test_a_slot_granted_in_the_same_moment_wins_over_another_deployments_failure() -> None:
    backend = _OneKeyFails()
    admission = Admission(backend, Metrics(CollectorRegistry()), max_streams=0)
    assert await backend.acquire_slot("deployment:b", 1, "y", 0)
    waiting = asyncio.create_task(admission.wait_for_any_deployment([("a", 1), ("b", 1)], "w", 5.0))
    await asyncio.sleep(0.01)
    backend.a_fails.set()
    backend.release_slot_nowait("deployment:b", "y")
    assert await asyncio.wait_for(waiting, 1.0) == 1  # b's slot, not a 503 for a
    assert backend.holds_slot("deployment:b", "w")
