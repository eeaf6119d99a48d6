"""Running the server. One worker: this process, on uvloop, with signals. Several: gunicorn (see workers.py).

Both build the app and its runner with `build_runner`: handler_cancellation on (a client that disconnects cancels
its handler at once, so the upstream is closed at once even while we wait on it) and a drain on cleanup.

Signals (one process): SIGTERM/SIGINT drain and exit (a second one ends the grace period at once); SIGHUP loads
the config again. A valid new config starts a new app generation (gateway, state backend, usage recorder) on the
same listening socket; the old generation stops accepting, finishes its requests in flight (up to its
shutdown_grace) and closes. An invalid one is refused with the usual message on stderr; nothing changes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sluicegate.config.loader import ConfigError, default_config, load_config
from sluicegate.config.schema import Config, ServerConfig
from sluicegate.observe import access_log
from sluicegate.observe.access_log import ACCESS_LOGGER
from sluicegate.observe.logsink import LOG_SINK, stderr_handler
from sluicegate.observe.metrics import Metrics
from sluicegate.server.app import create_app
from sluicegate.server.draining import END_WAIT, DrainingAppRunner, ShutdownCoordinator

log = logging.getLogger("sluicegate.server")

LISTEN_BACKLOG = 2048
RESTART_ONLY = ("host", "port", "workers")
"""server.* settings a reload cannot change (the listening socket and the process model stay)."""


@dataclass(frozen=True)
class ConfigSource:
    """Where the config comes from (a file, or the embedded default) and the command line's server.* overrides;
    read again on every reload."""

    path: str | None = None
    server_overrides: Mapping[str, object] = field(default_factory=dict)

    def load(self) -> Config:
        """Raises ConfigError."""
        config = load_config(self.path) if self.path else default_config()
        if self.server_overrides:
            server = config.server.model_copy(update=dict(self.server_overrides))
            config = config.model_copy(update={"server": server})
        return config


def config_error_message(error: ConfigError) -> str:
    return f"sluicegate: {error}"


def keep_restart_only(new: Config, running: Config) -> Config:
    """`new` with the running server.host, server.port and server.workers (a reload cannot change them)."""
    changed = [name for name in RESTART_ONLY if getattr(new.server, name) != getattr(running.server, name)]
    if not changed:
        return new
    log.warning("config reload: server.%s changes take effect at the next restart", ", server.".join(changed))
    kept = {name: getattr(running.server, name) for name in RESTART_ONLY}
    return new.model_copy(update={"server": new.server.model_copy(update=kept)})


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux/macOS
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def configure_logging(config: Config) -> None:
    """Everything goes to stderr through LOG_SINK's writer thread, so a stalled log reader cannot block the loop."""
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: an embedding program's own set-up wins
        root.addHandler(LOG_SINK.handler_for(stderr_handler("%(asctime)s %(levelname)s %(name)s %(message)s")))
        root.setLevel(config.logging.level.upper())
    # The access log is one JSON object per line and nothing else, so that log shippers can parse it as is.
    access = ACCESS_LOGGER
    if not access.handlers:
        target = stderr_handler("%(message)s")
        access.addHandler(LOG_SINK.handler_for(target))
        access.propagate = False
        access.setLevel(logging.INFO)
        access_log.write_lines_to(target)  # the lines skip `logging` and go to that handler's writer as bytes


def build_runner(config: Config, metrics: Metrics | None = None, *,
                 heartbeat: Callable[[], None] | None = None) -> DrainingAppRunner:
    app = create_app(config, metrics)
    coordinator = ShutdownCoordinator(config.server.shutdown_grace)
    coordinator.install(app)
    # The drain already waited shutdown_grace for requests in flight; aiohttp's own wait only covers their tails.
    return DrainingAppRunner(app, coordinator, heartbeat=heartbeat, handler_cancellation=True, access_log=None,
                             shutdown_timeout=END_WAIT)


def ready_line(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = address[0], address[1]
    shown = f"[{host}]" if ":" in host else host
    return f"sluicegate listening on http://{shown}:{port}"


def listen(server: ServerConfig) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(
        server.host, server.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return socket.create_server(address[:2], family=family, backlog=LISTEN_BACKLOG)


class SingleProcessServer:
    """The one-process server: a listening socket owned here, served by one app generation at a time."""

    def __init__(self, config: Config, source: ConfigSource | None) -> None:
        self.config = config
        self.source = source
        self.metrics = Metrics()  # shared by every generation: counters survive reloads
        self.listener: socket.socket | None = None
        self.current: DrainingAppRunner | None = None
        self.retiring: dict[DrainingAppRunner, asyncio.Task[None]] = {}
        self.signals: asyncio.Queue[int] = asyncio.Queue()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.listener = listen(self.config.server)
        try:
            self.current = await self._start_generation(self.config)
            print(ready_line(self.listener.getsockname()), flush=True)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(signum, self.signals.put_nowait, signum)
            while await self.signals.get() == signal.SIGHUP:
                await self._reload()
            await self._stop()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            self.listener.close()

    async def _start_generation(self, config: Config) -> DrainingAppRunner:
        assert self.listener is not None
        runner = build_runner(config, self.metrics)
        try:
            await runner.setup()
            # Each generation gets its own descriptor: closing it (when the generation drains) leaves the socket open.
            await web.SockSite(runner, self.listener.dup()).start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    async def _reload(self) -> None:
        if self.source is None:
            log.warning("SIGHUP ignored: this server was not started from a config source")
            return
        try:
            config = self.source.load()
        except ConfigError as error:
            print(config_error_message(error), file=sys.stderr, flush=True)
            log.error("config reload refused; the running config stays")
            return
        config = keep_restart_only(config, self.config)
        try:
            new = await self._start_generation(config)
        except Exception:
            log.exception("config reload failed while starting the new config; the running config stays")
            return
        old, self.current, self.config = self.current, new, config
        assert old is not None
        old.replaced = True
        self.retiring[old] = asyncio.create_task(old.cleanup(), name="sluicegate-retire-generation")
        self.retiring[old].add_done_callback(lambda _: self.retiring.pop(old, None))
        log.info("config reloaded; %d requests finish on the previous config", old.coordinator.in_flight)

    async def _stop(self) -> None:
        assert self.listener is not None and self.current is not None
        self.listener.close()  # the generations' own descriptors close as they drain
        runners = [self.current, *self.retiring]
        stopping = asyncio.gather(self.current.cleanup(), *self.retiring.values(), return_exceptions=True)
        while not stopping.done():
            next_signal = asyncio.ensure_future(self.signals.get())
            waiting: list[asyncio.Future[Any]] = [stopping, next_signal]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if next_signal.done() and next_signal.result() != signal.SIGHUP:
                log.warning("second stop signal: ending requests in flight now")
                for runner in runners:
                    runner.coordinator.end_grace()
            next_signal.cancel()
        for result in stopping.result():
            if isinstance(result, BaseException):
                log.error("shutdown: cleanup failed", exc_info=result)


def run(config: Config, source: ConfigSource | None = None) -> int:
    configure_logging(config)
    if config.server.workers > 1:
        from sluicegate.server.workers import run_workers

        return run_workers(config, source)
    install_uvloop()
    try:
        asyncio.run(SingleProcessServer(config, source).run())
    except OSError as error:
        if error.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        server = config.server
        print(f"sluicegate: cannot listen on {server.host}:{server.port}: {error.strerror}", file=sys.stderr)
        return 1
    return 0
