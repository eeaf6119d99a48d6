"""`sluicegate mock-upstream`: run the mock upstream until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import uvloop

from sluicegate.mock.behaviour import MockBehaviour
from sluicegate.mock.formats import WIRE_APIS
from sluicegate.mock.server import MockUpstream


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=9000, help="port to listen on, 0 = ephemeral (default: %(default)s)")
    p.add_argument(
        "--format",
        choices=sorted(WIRE_APIS),
        default="openai",
        help="wire format to speak (default: %(default)s)",
    )
    defaults = MockBehaviour()
    p.add_argument(
        "--tokens", type=int, default=defaults.tokens, help="content tokens per reply (default: %(default)s)"
    )
    p.add_argument(
        "--interval",
        type=float,
        default=defaults.interval,
        help="seconds between tokens, 0 = as fast as possible (default: %(default)s)",
    )
    p.add_argument(
        "--first-delay",
        type=float,
        default=defaults.first_delay,
        help="seconds between the response headers and the first event (default: %(default)s)",
    )
    p.add_argument(
        "--headers-delay",
        type=float,
        default=defaults.headers_delay,
        help="seconds before the response headers (default: %(default)s)",
    )
    _add_defaults_flag(p)


def _add_defaults_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--defaults",
        metavar="JSON",
        help='default "mock" controls for every request, as a JSON object (e.g. \'{"status": 503}\' for an '
        "upstream that is down); a request's own mock object still overrides them",
    )


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(host: str, port: int, wire_format: str, defaults: MockBehaviour) -> int:
    mock = MockUpstream(defaults=defaults, wire_format=wire_format)
    try:
        bound = await mock.start(host, port)
    except OSError as exc:
        print(f"mock-upstream: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"mock-upstream listening on {_url(host, bound)}", flush=True)
    try:
        await stop.wait()
    finally:
        await mock.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        defaults = MockBehaviour(
            tokens=args.tokens,
            interval=args.interval,
            first_delay=args.first_delay,
            headers_delay=getattr(args, "headers_delay", 0.0),
        )
        if getattr(args, "defaults", None):
            defaults = defaults.with_overrides(json.loads(args.defaults))
    except ValueError as exc:
        print(f"mock-upstream: {exc}", file=sys.stderr)
        return 2
    return uvloop.run(_serve(args.host, args.port, args.format, defaults))
