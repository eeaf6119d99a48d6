"""The access log: one JSON object per line per request, nothing else on the line.

By default the lines go straight to the log sink's writer thread as bytes (`write_lines_to`, set up by the server):
no `logging` record, no formatting and no copy per request. Without that set-up (an embedding program, in-process
tests) they go through the `sluicegate.access` logger, so whatever handlers are configured there receive them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sluicegate.observe.logsink import LOG_SINK, FdLineHandler

ACCESS_LOGGER = logging.getLogger("sluicegate.access")

_direct: Callable[[bytes], None] | None = None


def write_lines_to(handler: logging.Handler | None) -> None:
    """Send access-log lines straight to `handler` (the sink's target for `sluicegate.access`) when it writes to a
    file descriptor; otherwise, or with None, through the `sluicegate.access` logger."""
    global _direct
    _direct = None
    if isinstance(handler, FdLineHandler):
        LOG_SINK.start()
        _direct = lambda line: LOG_SINK.put(line, handler)  # noqa: E731


def enabled() -> bool:
    return _direct is not None or ACCESS_LOGGER.isEnabledFor(logging.INFO)


def write(line: bytes) -> None:
    if _direct is not None:
        _direct(line)
    else:
        ACCESS_LOGGER.info(line.decode())
