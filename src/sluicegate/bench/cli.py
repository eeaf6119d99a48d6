"""`sluicegate bench`: command-line options, the progress bar, and the exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import uvloop
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from sluicegate.bench.cpu import process_exists
from sluicegate.bench.protocol import Endpoint
from sluicegate.bench.report import render_table, to_json_dict
from sluicegate.bench.runner import BenchConfig, BenchResult, Phase, run_bench
from sluicegate.bench.stream import RequestOutcome
from sluicegate.upstream.client import parse_target

API_KEY_ENV = "SLUICEGATE_BENCH_API_KEY"
EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own code for bad arguments
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

DESCRIPTION = (
    "Stream N requests, C at a time, against any OpenAI-compatible endpoint and report TTFT,\n"
    "inter-token gaps, tokens/s, errors by kind and (with --cpu-pid) the CPU cost per token of\n"
    "other processes."
)

EPILOG = f"""\
measurement (client side, per request):
  TTFT            request sent -> first content-bearing event (chat: non-empty delta.content or a
                  tool_calls delta; completions: non-empty text; responses: output_text.delta or
                  function_call_arguments.delta)
  inter-token     time between consecutive content-bearing events of one request
  tokens          content-bearing events; usage completion_tokens (output_tokens) reported separately
  tokens/s        content events received in the measured phase / its wall time
  percentiles     linear interpolation between closest ranks (numpy's default)
  TTFT and inter-token gaps come from successful requests only; tokens/s counts every content event
  received, including those of requests that failed or were cut off by --max-seconds.

error kinds:
  http_<status>  non-200 answer        connect     connection could not be made
  timeout        --timeout exceeded    reset       connection broke (before the answer or mid-stream)
  stream_error   error event mid-stream (`event: error` or data with an "error" key)
  incomplete     body ended without [DONE] (responses: without response.completed/incomplete)
  bad_event      event data that is not valid JSON       client_error  any other client failure

exit codes:
  {EXIT_OK}  the run completed (request errors are reported, not fatal)
  {EXIT_USAGE}  bad arguments
  {EXIT_UNREACHABLE}  unreachable: a connection failed before any request got an HTTP answer
     (the run stops there)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)

The API key may also come from the environment variable {API_KEY_ENV}.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _base_url(text: str) -> str:
    try:
        parse_target(text)  # as the client will read it: http(s), a host, a valid port, an ASCII path
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an http:// or https:// URL with a host, ending in /v1, got {text!r}") from None
    return text.rstrip("/")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _live_pid(text: str) -> int:
    pid = int(text)
    if not process_exists(pid):
        raise argparse.ArgumentTypeError(f"no process with pid {pid}")
    return pid


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--url", required=True, type=_base_url, help="base URL ending in /v1, e.g. http://127.0.0.1:4000/v1")
    p.add_argument("--model", required=True, help="model name sent in every request")
    p.add_argument("--concurrency", "-c", type=_positive_int, default=10, help="requests in flight (default 10)")
    p.add_argument("--requests", "-n", type=_positive_int, default=100, help="measured requests (default 100)")
    p.add_argument(
        "--endpoint",
        choices=[e.value for e in Endpoint],
        default=Endpoint.CHAT.value,
        help="route and body shape: chat (messages), completions (prompt), responses (input); default chat",
    )
    p.add_argument("--prompt", default="Write a long story.", help="the user prompt")
    p.add_argument("--max-tokens", type=_positive_int, default=None, help="sent only when given")
    p.add_argument(
        "--extra-body",
        type=_json_object,
        default={},
        metavar="JSON",
        help='JSON object merged (deeply) into every request body, e.g. \'{"mock":{"tokens":200}}\'',
    )
    p.add_argument(
        "--no-usage",
        action="store_true",
        help="do not ask for stream_options.include_usage (chat/completions)",
    )
    p.add_argument("--api-key", default=None, help=f"sent as Authorization: Bearer (default: ${API_KEY_ENV})")
    p.add_argument(
        "--timeout", type=_positive_float, default=120.0, metavar="SECONDS", help="per request (default 120)"
    )
    p.add_argument(
        "--max-seconds",
        type=_positive_float,
        default=600.0,
        metavar="S",
        help="hard stop for the whole run, warm-up included; in-flight requests are cancelled (default 600)",
    )
    p.add_argument(
        "--cpu-pid",
        type=_live_pid,
        action="append",
        default=[],
        metavar="PID",
        help="report CPU time (user+sys, all threads) this process used during the measured phase, "
        "and CPU µs per token; may be repeated",
    )
    p.add_argument("--label", default=None, help="free text echoed in the output")
    p.add_argument("--warmup", type=_non_negative_int, default=0, metavar="N", help="requests run first, not counted")
    p.add_argument(
        "--ramp",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="spread the first requests of the --concurrency workers evenly over this many seconds (in each phase), "
        "so streams start and end at different times as in steady traffic; default 0: all start at once, a burst",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (seconds) instead of the table")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        url=args.url,
        model=args.model,
        endpoint=Endpoint(args.endpoint),
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        extra_body=args.extra_body,
        include_usage=not args.no_usage,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        concurrency=args.concurrency,
        requests=args.requests,
        warmup=args.warmup,
        ramp_s=args.ramp,
        timeout_s=args.timeout,
        max_seconds=args.max_seconds,
        cpu_pids=tuple(dict.fromkeys(args.cpu_pid)),
        label=args.label,
    )


class _ProgressBar:
    """Adapts the runner's progress callbacks to a rich progress bar (one bar per phase)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._ok = self._failed = 0

    def phase_started(self, phase: Phase, total: int) -> None:
        self._ok = self._failed = 0
        self._task = self._progress.add_task(phase.value, total=total, ok=0, failed=0)

    def request_done(self, phase: Phase, outcome: RequestOutcome) -> None:
        if outcome.error is None:
            self._ok += 1
        else:
            self._failed += 1
        if self._task is not None:
            self._progress.update(self._task, advance=1, ok=self._ok, failed=self._failed)


def _execute(config: BenchConfig, show_progress: bool) -> BenchResult:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if not show_progress:
            return runner.run(run_bench(config))
        progress = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            refresh_per_second=4,  # the bench shares 2 cores with what it measures
        )
        with progress:
            return runner.run(run_bench(config, _ProgressBar(progress)))


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        result = _execute(config, show_progress=not args.json)
    except KeyboardInterrupt:
        print("bench interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        sys.stdout.write(json.dumps(to_json_dict(result)) + "\n")
        sys.stdout.flush()
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)
        render_table(result, console)
    if result.unreachable:
        print(f"bench: cannot reach {config.request_url}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluicegate bench")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
