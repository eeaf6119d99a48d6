"""Stopping background tasks without waiting forever.

A cancellation can be lost inside library code: a client library that turns the CancelledError it receives
mid-call into an ordinary error, which the background loop's own error handling then absorbs (the loop must
survive an outage). The task then never ends, and a shutdown that awaits it hangs: seen with a gunicorn worker
that never exited after SIGTERM, its gateway waiting on the retry-budget publisher. So every background loop also
checks a closing flag, and `stop()` waits a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("sluicegate.background")

STOP_WAIT = 2.0


async def stop(tasks: Iterable[asyncio.Task[Any] | None], what: str, wait: float = STOP_WAIT) -> None:
    """Cancel `tasks` and wait up to `wait` seconds for them to end; any still running are left behind (their
    loops end at their next closing check) with a warning."""
    running = [task for task in tasks if task is not None and not task.done()]
    for task in running:
        task.cancel()
    await settle(running, what, wait)


async def settle(tasks: Iterable[asyncio.Task[Any] | None], what: str, wait: float = STOP_WAIT) -> None:
    """Wait up to `wait` seconds for `tasks` to end, without cancelling them; a warning names those still running."""
    running = {task for task in tasks if task is not None}
    if not running:
        return
    done, pending = await asyncio.wait(running, timeout=wait)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: an error while stopping is not worth a "never retrieved" warning
    if pending:
        log.warning("%s: %d background task(s) did not end within %gs; not waiting for them", what, len(pending),
                    wait)
