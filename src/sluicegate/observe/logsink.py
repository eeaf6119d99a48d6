"""Log output that never blocks the event loop.

A write to stderr blocks the writing thread once the pipe behind it is full: a log collector that stalls, or a
pipe nobody drains, would freeze every stream of the worker (measured: a gateway whose stderr is an unread pipe
stopped answering, /healthz included, after 113 requests). So log records go through a bounded queue to one
writer thread per process, which is the only thread that writes. If the writer is stuck, the queue fills and
further records are dropped and counted (`sluicegate_log_records_dropped_total`) instead.

The queue handler formats a record's message on the calling thread (the stdlib's QueueHandler does: it makes the
record self-contained); the writer thread formats the lines and writes them. It writes in batches: woken by a
record, it waits `BATCH_WAIT` for more, then writes everything queued, one `write` per run of records for the same
file descriptor. One wake-up and one system call per line (an access-log line per request) cost ~40 µs of CPU per
line at 2,500 lines/s; batched, and handed over as bytes (the access log), ~15 µs per request
(docs/benchmarks.md). Forked workers (gunicorn) start their own writer thread and queue: threads do not survive a
fork.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from itertools import groupby
from logging.handlers import QueueHandler

from prometheus_client import Counter

MAX_QUEUED_RECORDS = 4096  # ~4 MB at most of records waiting (a formatted access-log record is ~1 KB)
STOP_WAIT = 2.0  # at exit, how long queued records may take to be written before they are given up
BATCH_WAIT = 0.01  # after the first record, how long the writer lets more gather before it writes them all


class LogSink:
    """One writer thread and its queue. `handler_for(target)` gives a handler that loggers use in place of
    `target`; the writer thread hands each record to its target."""

    def __init__(self, max_queued: int = MAX_QUEUED_RECORDS, batch_wait: float = BATCH_WAIT) -> None:
        self.dropped = 0
        self.on_drop: Callable[[], None] | None = None  # set once metrics exist (the records dropped before count too)
        self._max_queued = max_queued
        self._batch_wait = batch_wait
        self._queue: queue.Queue[tuple[logging.LogRecord | bytes, logging.Handler] | None] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def report_drops_to(self, counter: Counter) -> None:
        """Drops so far and from now on are added to `counter` (a later call takes over)."""
        if self.dropped:
            counter.inc(self.dropped)
        self.on_drop = counter.inc

    def handler_for(self, target: logging.Handler) -> logging.Handler:
        self.start()
        return _SinkHandler(self, target)

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_all, name="sluicegate-log-writer", daemon=True)
                self._thread.start()

    def after_fork_in_child(self) -> None:
        """The parent's writer thread does not exist here, and its queue's lock may have been held at the fork."""
        was_writing = self._thread is not None
        self._queue = queue.Queue(self._max_queued)
        self._lock = threading.Lock()
        self._thread = None
        if was_writing:
            self.start()

    def put(self, record: logging.LogRecord | bytes, target: logging.Handler) -> None:
        """A record, or a line already formatted (bytes, no newline) for an `FdLineHandler` target."""
        try:
            self._queue.put_nowait((record, target))
        except queue.Full:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()

    def _write_all(self) -> None:
        q = self._queue
        while True:
            batch = [q.get()]
            if batch[0] is not None and self._batch_wait:
                time.sleep(self._batch_wait)  # meanwhile a put() wakes nobody: it is a lock and an append
            with contextlib.suppress(queue.Empty):
                while batch[-1] is not None:
                    batch.append(q.get_nowait())
            stop = batch[-1] is None
            items = [item for item in batch if item is not None]
            for target, run in groupby(items, key=lambda item: item[1]):
                records = [record for record, _ in run if isinstance(record, bytes) or record.levelno >= target.level]
                if isinstance(target, FdLineHandler):
                    target.emit_many(records)
                else:
                    for record in records:
                        if isinstance(record, logging.LogRecord):  # lines are only ever put for FdLineHandlers
                            target.handle(record)
            if stop:
                return

    def stop(self, wait: float = STOP_WAIT) -> None:
        """Write what is queued (waiting at most `wait` seconds for a stuck writer), then end the thread."""
        thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=wait)
        except queue.Full:
            return
        thread.join(wait)


class FdLineHandler(logging.Handler):
    """Writes each formatted record as one line straight to a file descriptor. No Python-level buffer and no lock
    (only the sink's writer thread calls it): nothing else, not logging's own shutdown flush, can end up waiting
    for a write that is stuck on a full pipe."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def createLock(self) -> None:
        self.lock = None  # Handler.acquire() is a no-op without one

    def emit(self, record: logging.LogRecord) -> None:
        self.emit_many([record])

    def emit_many(self, records: list[logging.LogRecord | bytes]) -> None:
        """The records' lines (and lines given as bytes) in one write; a partial write is continued, so the lines
        stay whole and in order."""
        lines: list[bytes] = []
        for record in records:
            if isinstance(record, bytes):
                lines.append(record)
                continue
            try:
                lines.append(self.format(record).encode("utf-8", "backslashreplace"))
            except Exception:
                self.handleError(record)
        lines.append(b"")
        data = b"\n".join(lines)
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except Exception:
            # As logging does for a failed emit (e.g. stderr closed): report it once per batch, never raise.
            failed = next((r for r in records if isinstance(r, logging.LogRecord)), None)
            self.handleError(failed or logging.makeLogRecord({"msg": "access log line"}))

    def flush(self) -> None:
        pass


def stderr_handler(line_format: str) -> logging.Handler:
    """A handler for stderr lines, to give to `LogSink.handler_for`."""
    try:
        handler: logging.Handler = FdLineHandler(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no real stderr (an embedding program, a test capture)
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(line_format))
    return handler


class _SinkHandler(QueueHandler):
    def __init__(self, sink: LogSink, target: logging.Handler) -> None:
        super().__init__(None)  # type: ignore[arg-type]  # records go to the sink, which owns the queue
        self._sink = sink
        self._target = target

    def enqueue(self, record: logging.LogRecord) -> None:
        self._sink.put(record, self._target)  # the record as prepare() made it: formatted, self-contained


LOG_SINK = LogSink()
os.register_at_fork(after_in_child=LOG_SINK.after_fork_in_child)
atexit.register(LOG_SINK.stop)
