"""`sluicegate serve | mock-upstream | bench | check-config`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sluicegate import __version__
from sluicegate.config.loader import ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    from sluicegate.server.run import ConfigSource, config_error_message, run

    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.workers is not None:
        if args.workers < 1:
            print("sluicegate: --workers must be at least 1", file=sys.stderr)
            return 2
        overrides["workers"] = args.workers
    # The source is read again on SIGHUP (with the same overrides).
    source = ConfigSource(args.config, overrides)
    try:
        config = source.load()
    except ConfigError as exc:
        print(config_error_message(exc), file=sys.stderr)
        return 2
    return run(config, source)


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        return 2
    names = ", ".join(m.name for m in config.models) or "(none)"
    print(f"{args.file}: OK ({len(config.models)} models: {names})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluicegate", description="A streaming-first LLM gateway.")
    parser.add_argument("--version", action="version", version=f"sluicegate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (no --config: the embedded default with a demo model)")
    serve.add_argument("--config", "-c", help="path to sluicegate.yaml")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port (0 = pick a free port)")
    serve.add_argument("--workers", type=int,
                       help="override server.workers (> 1: that many processes on one port, through gunicorn)")
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate a config file and print every problem found")
    check.add_argument("file")
    check.set_defaults(func=_check_config)

    from sluicegate.mock import cli as mock_cli

    mock = sub.add_parser("mock-upstream", help="run the fast OpenAI-compatible mock upstream")
    mock_cli.configure_parser(mock)
    mock.set_defaults(func=mock_cli.run)

    from sluicegate.bench import cli as bench_cli

    bench = sub.add_parser("bench", help="load-test any OpenAI-compatible endpoint with streaming requests")
    bench_cli.configure_parser(bench)
    bench.set_defaults(func=bench_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
