"""The off-hot-path writer: requests hand records to `submit`, a background task writes them in batches.

Memory is bounded by `max_queue` records, including a batch being written or retried: a batch leaves the queue
only once the store has taken it. When the queue is full, new records are dropped and counted; the request
path never waits for the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from sluicegate import background

from .record import UsageRecord
from .store import UsageRecordsRejected, UsageStore

logger = logging.getLogger(__name__)


class DropReason:
    """Why records were dropped, as passed to `on_drop` (bounded, fit for a metric label)."""

    QUEUE_FULL: Final = "queue_full"
    CLOSED: Final = "closed"
    """Submitted after `close()` began."""
    REJECTED: Final = "rejected"
    """The store refused the record's values."""
    SHUTDOWN_TIMEOUT: Final = "shutdown_timeout"
    """Still queued when `close()` gave up waiting for the store."""


class UsageRecorder:
    """Queues usage records and writes them to `store` in batches from a background task.

    Not thread-safe: call `submit` from the event loop's thread. The recorder neither opens nor closes the
    store.

    on_drop(reason, count) is called from `submit` and from the flusher whenever records are dropped (see
    `DropReason`); keep it cheap (a counter increment) and make sure it cannot raise.
    """

    def __init__(
        self,
        store: UsageStore,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        retry_initial: float = 0.1,
        retry_max: float = 10.0,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval <= 0:
            raise ValueError(
                f"usage recorder needs max_queue >= 1, batch_size >= 1 and flush_interval > 0; got "
                f"max_queue={max_queue}, batch_size={batch_size}, flush_interval={flush_interval}"
            )
        self._store = store
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._on_drop = on_drop
        self._queue: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._abandoned = False  # close() gave up waiting: the flusher stops retrying
        self._flusher: asyncio.Task[None] | None = None
        self._failures = 0
        self._failing_since = 0.0
        self.dropped = 0
        """Records accepted by nobody: queue full, closed, refused by the store, or abandoned at shutdown."""
        self.written = 0
        """Records the store has taken."""

    @property
    def queued(self) -> int:
        """Records accepted and not yet written (including a batch being written or retried)."""
        return len(self._queue)

    def submit(self, record: UsageRecord) -> bool:
        """Queue a record for writing; never blocks. False if it was dropped (queue full or closed)."""
        queue = self._queue
        if len(queue) >= self._max_queue or self._closing:
            self._drop(DropReason.CLOSED if self._closing else DropReason.QUEUE_FULL, 1)
            return False
        queue.append(record)
        if len(queue) >= self._batch_size:
            self._wake.set()
        return True

    async def start(self) -> None:
        """Start the background flusher. Records submitted before this wait in the queue."""
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._run(), name="usage-recorder-flusher")

    async def close(self, flush_timeout: float = 10.0) -> None:
        """Stop accepting records and write every accepted one before returning.

        If the store is still failing after `flush_timeout` seconds, the records left are dropped (counted and
        logged).
        """
        self._closing = True
        self._wake.set()
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._run(), name="usage-recorder-flusher")
        done, _ = await asyncio.wait({self._flusher}, timeout=flush_timeout)
        if not done:
            self._abandoned = True  # the flusher's retry loops end at their next check, even if the cancel is lost
            await background.stop([self._flusher], "usage recorder")
            lost = len(self._queue)
            self._queue.clear()
            logger.error("usage recorder closed with the store still failing: %d usage records lost", lost)
            self._drop(DropReason.SHUTDOWN_TIMEOUT, lost)
        else:
            self._flusher.result()  # a bug in the flusher must not pass silently

    def _drop(self, reason: str, count: int) -> None:
        self.dropped += count
        if self._on_drop is not None:
            self._on_drop(reason, count)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + self._flush_interval
        while not self._abandoned:
            wait = next_flush - loop.time()
            if wait > 0 and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            interval_due = loop.time() >= next_flush
            # Full batches go at once; a partial one waits for the interval (or shutdown) to gather more.
            while len(self._queue) >= self._batch_size or (self._queue and (interval_due or self._closing)):
                await self._write_front(min(len(self._queue), self._batch_size))
            if interval_due:
                next_flush = loop.time() + self._flush_interval
            if self._closing and not self._queue:
                return

    async def _write_front(self, count: int) -> None:
        """Write the oldest `count` records, retrying until the store takes them; only then do they leave the
        queue (the flusher alone removes records, so the front of the queue cannot change meanwhile)."""
        batch = list(itertools.islice(self._queue, count))
        while True:
            try:
                await self._store.write_batch(batch)
            except UsageRecordsRejected as exc:
                logger.error("usage store refused a batch of %d records (%s); retrying them one by one", count, exc)
                await self._write_one_by_one(batch)
                return
            except Exception as exc:
                if self._abandoned:
                    return
                await self._back_off(exc)
                continue
            self._recovered()
            self._remove_front(count)
            self.written += count
            return

    async def _write_one_by_one(self, batch: list[UsageRecord]) -> None:
        for record in batch:
            while True:
                try:
                    await self._store.write_batch([record])
                except UsageRecordsRejected as exc:
                    logger.error("usage record %s dropped: the store refused it (%s)", record.request_id, exc)
                    self._drop(DropReason.REJECTED, 1)
                except Exception as exc:
                    if self._abandoned:
                        return
                    await self._back_off(exc)
                    continue
                else:
                    self._recovered()
                    self.written += 1
                break
            self._remove_front(1)

    def _remove_front(self, count: int) -> None:
        for _ in range(count):
            self._queue.popleft()

    async def _back_off(self, exc: Exception) -> None:
        self._failures += 1
        if self._failures == 1:  # once per failure streak; the recovery is logged too
            logger.warning("usage store failing, keeping %d queued records and retrying: %s", len(self._queue), exc)
            self._failing_since = time.monotonic()
        ceiling = min(self._retry_max, self._retry_initial * 2 ** min(self._failures - 1, 30))
        if self._closing:  # shutdown is bounded by close()'s timeout: keep trying often enough to use it
            ceiling = min(ceiling, 1.0)
        await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    def _recovered(self) -> None:
        if self._failures:
            logger.warning(
                "usage store recovered after %d failed attempts in %.1f s",
                self._failures,
                time.monotonic() - self._failing_since,
            )
            self._failures = 0
