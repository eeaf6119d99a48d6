"""Log output never blocks the event loop: a gateway whose stderr nobody reads keeps serving, and the log sink
drops (and counts) what its writer thread cannot write instead of making the logging call wait."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import subprocess
import threading
import time
import urllib.request

from sluicegate.observe import access_log
from sluicegate.observe.logsink import FdLineHandler, LogSink
from tests.support.http import metric, wait_for
from tests.support.procs import Proc, one_model, start_gateway


def _stream(url: str) -> None:
    body = json.dumps({"model": "m", "stream": True, "messages": [], "mock": {"tokens": 1, "interval": 0}}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200 and b"[DONE]" in resp.read()


def test_a_gateway_whose_stderr_is_not_read_keeps_serving(mock_upstream: Proc) -> None:
    # One access-log line per request: 400 lines are several times what the pipe holds (64 KiB). Writing them on
    # the event loop froze the gateway, /healthz included, after ~110 requests.
    proc = start_gateway(one_model(f"{mock_upstream.url}/v1"), stderr=subprocess.PIPE)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(_stream, [proc.url] * 400))
        with urllib.request.urlopen(f"{proc.url}/healthz", timeout=10) as resp:
            assert resp.status == 200
        assert metric(proc.url, "sluicegate_log_records_dropped_total") == 0  # queued, not lost (yet)
        assert wait_for(lambda: metric(proc.url, "sluicegate_streams_in_flight") == 0, 5.0)
    finally:
        proc.stop()


def _sink_logger(sink: LogSink, stream: object, name: str) -> logging.Logger:
    target = logging.StreamHandler(stream)  # type: ignore[arg-type]
    target.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers = [sink.handler_for(target)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_a_stuck_writer_costs_dropped_lines_not_a_blocked_caller() -> None:
    read_end, write_end = os.pipe()
    sink = LogSink(max_queued=8)
    drops: list[int] = []
    sink.on_drop = lambda: drops.append(1)
    with os.fdopen(write_end, "w") as pipe, os.fdopen(read_end, "rb") as reader:
        logger = _sink_logger(sink, pipe, "test.logsink.stuck")
        started = time.monotonic()
        for i in range(200):
            logger.info("line %d %s", i, "x" * 10_000)  # 2 MB in all; the pipe holds 64 KiB
        assert time.monotonic() - started < 2.0  # nobody reads: a blocking write would hang here
        assert sink.dropped > 0 and len(drops) == sink.dropped
        # Once the reader drains, the writer carries on with what is queued and what comes next.
        drained = bytearray()

        def drain() -> None:
            while chunk := reader.read1(65536):
                drained.extend(chunk)

        reading = threading.Thread(target=drain, daemon=True)
        reading.start()
        settled_at = time.monotonic() + 10
        size = -1
        while size != len(drained) and time.monotonic() < settled_at:  # the queued lines are written
            size = len(drained)
            time.sleep(0.2)
        logger.warning("after the stall")
        sink.stop()
        pipe.close()
        reading.join(10)
    assert b"WARNING after the stall\n" in drained
    assert drained.startswith(b"INFO line 0 ")


def test_a_forked_child_writes_through_its_own_writer_thread() -> None:
    """gunicorn forks the workers after logging is set up; the parent's writer thread does not exist there."""
    read_end, write_end = os.pipe()
    sink = LogSink()
    os.register_at_fork(after_in_child=sink.after_fork_in_child)
    with os.fdopen(write_end, "w") as pipe:
        logger = _sink_logger(sink, pipe, "test.logsink.fork")
        logger.info("from the parent")
        pid = os.fork()
        if pid == 0:  # the child: log, flush through its own thread, leave without running the parent's cleanups
            try:
                logger.info("from the child")
                sink.stop()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        sink.stop()
    with os.fdopen(read_end, "rb") as reader:
        written = reader.read()
    assert b"INFO from the parent\n" in written and b"INFO from the child\n" in written


def test_lines_are_written_in_batches_whole_and_in_order() -> None:
    """A burst of lines costs a few writes, not one system call (and one thread wake-up) per line; records and
    ready-made lines (the access log's) for the same descriptor keep their order."""
    read_end, write_end = os.pipe()
    writes: list[int] = []

    class CountingHandler(FdLineHandler):
        def emit_many(self, records: list[logging.LogRecord | bytes]) -> None:
            writes.append(len(records))
            super().emit_many(records)

    target = CountingHandler(write_end)
    target.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    sink = LogSink()
    logger = logging.getLogger("test.logsink.batches")
    logger.handlers = [sink.handler_for(target)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    drained = bytearray()

    def drain() -> None:
        with os.fdopen(read_end, "rb") as reader:
            while chunk := reader.read1(65536):
                drained.extend(chunk)

    reading = threading.Thread(target=drain, daemon=True)
    reading.start()
    for i in range(1000):
        if i % 2:
            sink.put(b'{"line": %d}' % i, target)
        else:
            logger.info("line %d", i)
    sink.stop()
    os.close(write_end)
    reading.join(10)
    expected = b"".join(b'{"line": %d}\n' % i if i % 2 else b"INFO line %d\n" % i for i in range(1000))
    assert bytes(drained) == expected
    assert sum(writes) == 1000 and len(writes) < 100, writes


def test_access_log_lines_skip_logging_once_the_server_set_them_up() -> None:
    read_end, write_end = os.pipe()
    target = FdLineHandler(write_end)
    seen: list[bytes] = []
    records: list[logging.LogRecord] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    recorder = Recorder()
    level = access_log.ACCESS_LOGGER.level
    access_log.ACCESS_LOGGER.addHandler(recorder)
    try:
        access_log.write_lines_to(target)
        access_log.write(b'{"request_id": "a"}')
        with os.fdopen(read_end, "rb") as reader:
            reading = threading.Thread(target=lambda: seen.append(reader.readline()), daemon=True)
            reading.start()
            reading.join(5)
        assert seen == [b'{"request_id": "a"}\n'] and not records  # straight to the descriptor, no logging record
        access_log.write_lines_to(None)  # without the server's set-up: through the logger's own handlers
        access_log.ACCESS_LOGGER.setLevel(logging.INFO)
        access_log.write(b'{"request_id": "b"}')
        assert [r.getMessage() for r in records] == ['{"request_id": "b"}']
    finally:
        access_log.write_lines_to(None)
        access_log.ACCESS_LOGGER.removeHandler(recorder)
        access_log.ACCESS_LOGGER.setLevel(level)
        os.close(write_end)
