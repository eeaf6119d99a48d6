"""Running the server in one process: uvloop, an AppRunner that cancels handlers of vanished clients, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from sluicegate.config.schema import Config
from sluicegate.server.app import create_app

log = logging.getLogger("sluicegate.server")


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux/macOS
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(config: Config) -> None:
    app = create_app(config)
    # handler_cancellation: a client that disconnects cancels its handler at once, so the upstream is closed at
    # once even while we are waiting on it (not only at the next write).
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=config.server.shutdown_grace
    )
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, backlog=2048, reuse_address=True)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"sluicegate listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(config: Config) -> int:
    logging.basicConfig(level=config.logging.level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    install_uvloop()
    asyncio.run(serve(config))
    return 0
