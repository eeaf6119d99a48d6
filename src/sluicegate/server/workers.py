"""`serve --workers N`: N processes on one port through gunicorn, with aiohttp's uvloop worker.

The master (gunicorn's arbiter) binds the port, forks the workers, replaces any that die and handles signals:
- SIGTERM: it closes its listener and sends SIGTERM to every worker; each drains (server/draining.py) and exits.
  The master waits up to shutdown_grace + END_WAIT + SHUTDOWN_SLACK, then kills what is left.
  SIGINT/SIGQUIT: quick shutdown; workers end their requests in flight at once (with the shutdown error).
- SIGHUP: the master loads and validates the config first. Invalid: the usual message on stderr, nothing changes.
  Valid: gunicorn starts new workers with it and sends SIGTERM to the old ones, which stop accepting and finish
  their requests in flight on the old config (up to shutdown_grace). The port never stops accepting.
  server.host, server.port and server.workers keep their running values until a restart (as with one process).
Metrics: before forking, the master points prometheus-client's multiprocess mode at a fresh directory; /metrics
in any worker merges every worker's files; the live gauges of a worker that exits are dropped. The directory
is removed when the master exits. Nothing is loaded in the master: each worker opens its own state backend and
usage store after the fork.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from types import FrameType
from typing import Any

from aiohttp import web
from aiohttp.worker import GunicornUVLoopWebWorker
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from sluicegate.config.loader import ConfigError
from sluicegate.config.schema import Config
from sluicegate.observe.metrics import enable_multiprocess, mark_worker_dead
from sluicegate.server.draining import END_WAIT, DrainingAppRunner
from sluicegate.server.run import ConfigSource, build_runner, config_error_message, keep_restart_only, ready_line

SHUTDOWN_SLACK = 15.0
"""Seconds the master waits beyond a worker's drain (grace + END_WAIT) before killing it: the app's cleanup, which
includes up to 10 s for the usage recorder to write what is queued."""

WORKER_TIMEOUT = 30
"""A worker whose event loop has not reported for this long is killed and replaced (gunicorn's `timeout`)."""

READY_MARKER = "ready"


class SluicegateWorker(GunicornUVLoopWebWorker):
    """aiohttp's uvloop worker serving our runner (handler cancellation, drain on exit)."""

    app: SluicegateApplication
    sockets: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runner: DrainingAppRunner | None = None
        self._announced = False

    def load_wsgi(self) -> None:
        self.wsgi = self._make_runner
        # Serve the plain sockets, not gunicorn's wrappers: the event loop closes them when a drain stops
        # accepting, and a wrapper would try to close the same descriptor a second time.
        self.sockets = [getattr(sock, "sock", sock) for sock in self.sockets]

    async def _make_runner(self) -> web.AppRunner:
        self._runner = build_runner(self.app.config, heartbeat=self.notify)
        return self._runner

    def notify(self) -> None:
        super().notify()
        if not self._announced:
            # The serve loop's first heartbeat comes right after this worker started serving the sockets.
            self._announced = True
            announce_ready(self.app.runtime_dir, self.sockets[0].getsockname())

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._notify_waiter_done()  # leave the serve loop now, not at its next one-second tick

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        if self._runner is not None:
            self._runner.coordinator.end_grace()
        super().handle_quit(sig, frame)


def announce_ready(runtime_dir: str, address: tuple[str, int]) -> None:
    """Print the ready line once per master, whichever worker is first (and not again after a reload)."""
    try:
        fd = os.open(os.path.join(runtime_dir, READY_MARKER), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    print(ready_line(address), flush=True)


class SluicegateArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, refusing a SIGHUP whose config is invalid."""

    app: SluicegateApplication

    def handle_hup(self) -> None:
        source = self.app.source
        if source is None:
            self.log.warning("SIGHUP ignored: this server was not started from a config source")
            return
        try:
            config = source.load()
        except ConfigError as error:
            print(config_error_message(error), file=sys.stderr, flush=True)
            self.log.error("config reload refused; the running config stays")
            return
        self.app.config = keep_restart_only(config, self.app.config)
        super().handle_hup()


def _worker_exited(server: Arbiter, worker: SluicegateWorker) -> None:
    mark_worker_dead(worker.pid)


class SluicegateApplication(BaseApplication):  # type: ignore[misc]
    """Drives gunicorn from a sluicegate Config (no gunicorn config file, no command line of its own)."""

    def __init__(self, config: Config, source: ConfigSource | None, runtime_dir: str) -> None:
        self.config = config
        self.source = source
        self.runtime_dir = runtime_dir
        super().__init__()

    def load_config(self) -> None:
        server = self.config.server
        host = f"[{server.host}]" if ":" in server.host else server.host
        settings: dict[str, object] = {
            "bind": [f"{host}:{server.port}"],
            "workers": server.workers,
            "worker_class": SluicegateWorker,
            "graceful_timeout": math.ceil(server.shutdown_grace + END_WAIT + SHUTDOWN_SLACK),
            "timeout": WORKER_TIMEOUT,
            "backlog": 2048,
            "proc_name": "sluicegate",
            "loglevel": self.config.logging.level,
            "errorlog": "-",
            "accesslog": None,  # the gateway writes its own access log
            "control_socket_disable": True,  # several instances per host must not share one control socket
            "child_exit": _worker_exited,
        }
        for name, value in settings.items():
            self.cfg.set(name, value)

    def load(self) -> None:
        """Unused: each worker builds its own runner after the fork (see SluicegateWorker.load_wsgi)."""

    def run(self) -> None:
        SluicegateArbiter(self).run()


def run_workers(config: Config, source: ConfigSource | None) -> int:
    runtime_dir = tempfile.mkdtemp(prefix="sluicegate-run-")
    metrics_dir = os.path.join(runtime_dir, "metrics")
    os.mkdir(metrics_dir)
    enable_multiprocess(metrics_dir)
    master = os.getpid()
    try:
        SluicegateApplication(config, source, runtime_dir).run()
    except SystemExit as exit_:
        if os.getpid() != master:
            raise  # a worker leaving: gunicorn ends forked children with SystemExit through this same stack
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        if os.getpid() == master:
            shutil.rmtree(runtime_dir, ignore_errors=True)
    return 0
