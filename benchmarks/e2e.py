"""End-to-end benchmark: the bench DIRECT to the mock upstream vs THROUGH the gateway, in one run.

Starts `sluicegate mock-upstream` and `sluicegate serve` as subprocesses on free 127.0.0.1 ports, runs
`sluicegate bench --json` K times against each (alternating the order to cancel drift), measuring the CPU per
token of the gateway and of the mock, and prints the medians plus markdown rows for docs/benchmarks.md.

    .venv/bin/python benchmarks/e2e.py                      # 200 streams x 200 tokens, 10 ms apart, K=3
    .venv/bin/python benchmarks/e2e.py --gateway-config-extra features.yaml --label "with auth"

The gateway's CPU figure is that of the `serve` process itself: it is right for the default single process,
not for a multi-worker gateway (workers are separate processes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

MOCK_READY = re.compile(r"mock-upstream listening on (http://\S+)")
GATEWAY_READY = re.compile(r"sluicegate listening on (http://\S+)")
GATEWAY_MODEL = "bench-model"
MOCK_MODEL = "mock-model"


class BenchmarkError(Exception):
    """Something the operator must fix: a subprocess that would not start, or a bench run that failed."""


class Child:
    """A subprocess whose output is drained by a thread; ready once a line matches `ready`."""

    def __init__(self, name: str, argv: list[str], ready: re.Pattern[str] | str) -> None:
        """`ready` is a pattern for the line that announces the URL, or the URL itself when the program prints
        nothing (nginx): the child is ready once that port accepts connections."""
        self.name = name
        self._ready_pattern = ready if isinstance(ready, re.Pattern) else None
        self._ready_url = ready if isinstance(ready, str) else None
        self._ready = threading.Event()
        self.url: str | None = None
        self.tail: deque[str] = deque(maxlen=40)
        # Own session, so stopping it also stops anything it forks (e.g. gunicorn workers).
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._drain, name=f"{name}-output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip("\n"))
            if self.url is None and self._ready_pattern and (match := self._ready_pattern.search(line)):
                self.url = match.group(1).rstrip("/")
                self._ready.set()
        self._ready.set()  # EOF: wake wait_ready so it can report the early exit

    def wait_ready(self, timeout_s: float) -> str:
        if self._ready_url is not None:
            self._poll_port(self._ready_url, timeout_s)
        self._ready.wait(timeout_s)
        if self.url is not None:
            return self.url
        try:
            exited: int | None = self.proc.wait(1)  # output ended: give the process a moment to exit
        except subprocess.TimeoutExpired:
            exited = None
        state = f"exited with code {exited}" if exited is not None else f"no ready line within {timeout_s:g} s"
        raise BenchmarkError(f"{self.name} did not start ({state}). Last output:\n{self.output()}")

    def _poll_port(self, url: str, timeout_s: float) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
                self.url = url
                self._ready.set()
                return
            time.sleep(0.05)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchmarkError(f"{self.name} died (exit code {self.proc.returncode}). Last output:\n{self.output()}")

    def output(self) -> str:
        return "\n".join(f"  | {line}" for line in self.tail) or "  | (nothing)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(2)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def gateway_config(mock_url: str, extra_file: Path | None, tmp: Path) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        # A fresh usage database per run, in the run's temporary directory: runs compare alike (an index that grew
        # over earlier runs costs more per insert) and nothing is left behind. An extra config may set its own.
        "usage": {"dsn": str(tmp / "usage.db")},
        "models": [
            {
                "name": GATEWAY_MODEL,
                "deployments": [{"provider": "openai", "api_base": f"{mock_url}/v1", "model": MOCK_MODEL}],
            }
        ],
    }
    if extra_file is not None:
        extra = yaml.safe_load(extra_file.read_text()) or {}
        if not isinstance(extra, dict):
            raise BenchmarkError(f"{extra_file}: the extra gateway config must be a YAML mapping")
        config = deep_merge(config, extra)
    return config


NGINX_CONF = """\
# One process (no master), so its CPU time is the whole proxy's. Streaming settings as nginx's docs give them
# for SSE: no response buffering, HTTP/1.1 keep-alive to the upstream.
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    upstream mock {{ server {upstream}; keepalive 512; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def nginx_command(mock_url: str, tmp: Path) -> tuple[list[str], str]:
    """nginx as a pass-through proxy in front of the mock (`--nginx`): the command and the URL it serves."""
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        raise BenchmarkError("--nginx needs nginx (e.g. apt-get install nginx-light)")
    with socket.socket() as probe:  # a free port; nginx cannot report the one it picked
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, upstream=mock_url.removeprefix("http://"), port=port))
    return [nginx, "-c", str(conf), "-p", str(tmp), "-e", "stderr"], f"http://127.0.0.1:{port}"


def run_bench(args: argparse.Namespace, url: str, model: str, label: str, cpu_pids: list[int]) -> dict[str, Any]:
    extra_body = {"mock": {"tokens": args.tokens, "interval": args.interval}}
    argv = [
        *(args.python, "-m", "sluicegate.bench", "--json"),
        *("--url", f"{url}/v1", "--model", model, "--endpoint", args.endpoint),
        *("--concurrency", str(args.concurrency), "--requests", str(args.requests)),
        *("--warmup", str(args.warmup), "--max-seconds", str(args.max_seconds), "--label", label),
        *("--extra-body", json.dumps(extra_body), "--ramp", str(args.ramp)),
    ]
    for pid in cpu_pids:
        argv += ["--cpu-pid", str(pid)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=args.max_seconds + 30, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"bench run {label!r} did not finish within {args.max_seconds + 30:g} s") from None
    if done.returncode != 0:
        raise BenchmarkError(f"bench run {label!r} failed with exit code {done.returncode}:\n{done.stderr[-2000:]}")
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchmarkError(f"bench run {label!r} printed no JSON:\n{done.stdout[-2000:]}") from None
    return result


def per_token_us(result: dict[str, Any], pid: int) -> float | None:
    value = result["cpu"].get(str(pid), {}).get("us_per_token")
    return float(value) if value is not None else None


def run_metrics(result: dict[str, Any], gateway_pid: int | None, mock_pid: int) -> dict[str, float | None]:
    tokens = result["tokens"]["content_events"]
    return {
        "tokens_per_s": result["tokens_per_s"],
        "ttft_p50_ms": _ms(result["ttft_s"]["p50"]),
        "ttft_p99_ms": _ms(result["ttft_s"]["p99"]),
        "itl_p50_ms": _ms(result["itl_s"]["p50"]),
        "itl_p99_ms": _ms(result["itl_s"]["p99"]),
        "gateway_us_per_token": per_token_us(result, gateway_pid) if gateway_pid is not None else None,
        "mock_us_per_token": per_token_us(result, mock_pid),
        "bench_us_per_token": result["client_cpu_s"] * 1e6 / tokens if tokens else None,
        "bench_cpu_share": result["client_cpu_s"] / result["wall_s"] if result["wall_s"] else None,
        "ok": result["requests"]["ok"],
        "errors": sum(result["errors"].values()) + result["requests"]["cancelled"],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def medians(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    keys = runs[0].keys()
    out: dict[str, float | None] = {}
    for key in keys:
        values = [v for r in runs if (v := r[key]) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def describe_run(name: str, m: dict[str, float | None]) -> str:
    return (
        f"{name:>10}: {_fmt(m['tokens_per_s'], 0)} tok/s, TTFT p50 {_fmt(m['ttft_p50_ms'])} ms"
        f" p99 {_fmt(m['ttft_p99_ms'])} ms, ITL p99 {_fmt(m['itl_p99_ms'], 2)} ms,"
        f" gateway {_fmt(m['gateway_us_per_token'])} us/token, mock {_fmt(m['mock_us_per_token'])} us/token,"
        f" bench CPU {_fmt((m['bench_cpu_share'] or 0) * 100, 0)}% of a core, failed {_fmt(m['errors'], 0)}"
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def machine_line(python: str) -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    version = (
        subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        or platform.python_version()
    )
    return f"{os.cpu_count()} CPUs, {model}, Python {version}"  # all of them, also under --pin-gateway


def markdown(args: argparse.Namespace, summary: dict[str, dict[str, float | None]]) -> str:
    load = (
        f"{args.concurrency} streams x {args.tokens} tokens, {args.interval * 1000:g} ms apart, "
        f"{args.requests} requests per run, {args.endpoint} endpoint, median of {args.repeats} runs"
    )
    label = f" — {args.label}" if args.label else ""
    if args.pin_gateway is not None:
        load += f", gateway alone on CPU {args.pin_gateway}"
    lines = [
        f"Machine: {machine_line(args.python)}; {time.strftime('%Y-%m-%d')}{label}.",
        f"Load: {load}.",
        "",
        "| path | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| gateway µs/token | mock µs/token | bench µs/token | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in summary.items():
        lines.append(
            f"| {name} | {_fmt(m['tokens_per_s'], 0)} | {_fmt(m['ttft_p50_ms'])} | {_fmt(m['ttft_p99_ms'])} "
            f"| {_fmt(m['itl_p50_ms'], 2)} | {_fmt(m['itl_p99_ms'], 2)} | {_fmt(m['gateway_us_per_token'])} "
            f"| {_fmt(m['mock_us_per_token'])} | {_fmt(m['bench_us_per_token'])} | {_fmt(m['errors'], 0)} |"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def stopped_on_exit(children: list[Child]) -> Iterator[None]:
    """Stop every child on any exit: normal, error, Ctrl-C or SIGTERM."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        for child in reversed(children):
            child.stop()
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", "-k", type=int, default=3, help="runs per path (default 3)")
    p.add_argument("--concurrency", type=int, default=200, help="concurrent streams (default 200)")
    p.add_argument("--tokens", type=int, default=200, help="tokens per stream (default 200)")
    p.add_argument("--interval", type=float, default=0.01, help="seconds between tokens (default 0.01)")
    p.add_argument("--requests", type=int, default=None, help="measured requests per run (default 2 x concurrency)")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up requests per run (default: concurrency, so every connection is open)",
    )
    p.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sluicegate bench --ramp: spread the workers' first requests over this long (default 0: one burst)",
    )
    p.add_argument("--endpoint", choices=["chat", "completions", "responses"], default="chat")
    p.add_argument("--max-seconds", type=float, default=120.0, help="hard limit per bench run (default 120)")
    p.add_argument("--ready-timeout", type=float, default=20.0, help="seconds to wait for a ready line")
    p.add_argument(
        "--gateway-config-extra",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML merged into the gateway config",
    )
    p.add_argument("--label", default="", help="free text for the markdown heading")
    p.add_argument("--bare-proxy", action="store_true",
                   help="run benchmarks/bare_proxy.py (a featureless aiohttp proxy) in place of the gateway")
    p.add_argument("--relay-proxy", action="store_true",
                   help="run benchmarks/relay_proxy.py (a featureless callback relay, the gateway's design) instead")
    p.add_argument("--raw-relay-proxy", action="store_true",
                   help="run benchmarks/raw_relay_proxy.py (the same relay behind a raw asyncio server, no aiohttp)")
    p.add_argument("--nginx", action="store_true",
                   help="run nginx (one process, proxy_buffering off) in place of the gateway: the C reference")
    p.add_argument("--pin-gateway", type=int, default=None, metavar="CPU",
                   help="run the gateway (or comparison proxy) alone on this CPU and everything else (the mock, the "
                        "bench, this script) on the others: the gateway gets a core of its own, as in production")
    p.add_argument("--json-out", type=Path, default=None, metavar="FILE", help="also write every raw result here")
    p.add_argument("--python", default=sys.executable, help="interpreter for the subprocesses")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.concurrency < 1 or args.tokens < 1:
        p.error("--repeats, --concurrency and --tokens must be >= 1")
    if args.requests is None:
        args.requests = 2 * args.concurrency
    if args.warmup is None:
        args.warmup = args.concurrency
    return args


Runs = dict[str, list[dict[str, Any]]]


def pin_load_side(cpu: int) -> None:
    """This process and everything it starts from now on (the mock, the bench) run on every CPU but `cpu`."""
    cpus = os.sched_getaffinity(0)
    if cpu not in cpus or len(cpus) < 2:
        raise BenchmarkError(f"--pin-gateway {cpu}: needs that CPU and at least one other (this process may use "
                             f"{sorted(cpus)})")
    os.sched_setaffinity(0, cpus - {cpu})


def measure(args: argparse.Namespace, children: list[Child], tmp: Path) -> Runs:
    """Start the mock and the gateway, then alternate bench runs DIRECT and THROUGH; raw results by path."""
    if args.pin_gateway is not None:
        pin_load_side(args.pin_gateway)
    mock = Child("mock-upstream", [args.python, "-m", "sluicegate", "mock-upstream", "--port", "0"], MOCK_READY)
    children.append(mock)
    mock_url = mock.wait_ready(args.ready_timeout)
    config_path = tmp / "sluicegate.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(mock_url, args.gateway_config_extra, tmp)))
    serve = [args.python, "-m", "sluicegate", "serve", "--config", str(config_path)]
    if args.bare_proxy:
        serve = [args.python, str(Path(__file__).with_name("bare_proxy.py")), mock_url]
    if args.relay_proxy:
        serve = [args.python, str(Path(__file__).with_name("relay_proxy.py")), mock_url]
    if args.raw_relay_proxy:
        serve = [args.python, str(Path(__file__).with_name("raw_relay_proxy.py")), mock_url]
    ready: re.Pattern[str] | str = GATEWAY_READY
    if args.nginx:
        serve, ready = nginx_command(mock_url, tmp)
    gateway = Child("gateway", serve, ready)
    children.append(gateway)
    if args.pin_gateway is not None:
        # Before it starts threads of its own (they inherit it); the others inherited ours from pin_load_side().
        os.sched_setaffinity(gateway.pid, {args.pin_gateway})
    gateway_url = gateway.wait_ready(args.ready_timeout)
    print(f"mock {mock_url} (pid {mock.pid}), gateway {gateway_url} (pid {gateway.pid})", file=sys.stderr)
    targets = {
        "direct": (mock_url, MOCK_MODEL, [mock.pid], None),
        "gateway": (gateway_url, GATEWAY_MODEL, [gateway.pid, mock.pid], gateway.pid),
    }
    runs: Runs = {"direct": [], "gateway": []}
    for rep in range(args.repeats):
        for name in ["direct", "gateway"] if rep % 2 == 0 else ["gateway", "direct"]:
            url, model, pids, gateway_pid = targets[name]
            result = run_bench(args, url, model, f"{name} #{rep + 1}", pids)
            for child in children:
                child.check_alive()
            result["e2e_metrics"] = m = run_metrics(result, gateway_pid, mock.pid)
            runs[name].append(result)
            print(describe_run(f"{name} #{rep + 1}", m), file=sys.stderr)
            if (m["bench_cpu_share"] or 0) > 0.85:
                print("  warning: the bench used most of a core; it may be the bottleneck", file=sys.stderr)
    return runs


def proxy_name(args: argparse.Namespace) -> str:
    """What stood between the bench and the mock in the "gateway" runs."""
    for flag, name in (("nginx", "nginx"), ("bare_proxy", "the bare aiohttp proxy"),
                       ("relay_proxy", "the relay floor"), ("raw_relay_proxy", "the raw relay floor")):
        if getattr(args, flag):
            return name
    return "sluicegate"


def report(args: argparse.Namespace, runs: Runs) -> None:
    through_name = f"through {proxy_name(args)}"
    summary = {
        "direct to mock": medians([r["e2e_metrics"] for r in runs["direct"]]),
        through_name: medians([r["e2e_metrics"] for r in runs["gateway"]]),
    }
    if args.json_out is not None:
        settings = {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()}
        args.json_out.write_text(json.dumps({"args": settings, "runs": runs, "medians": summary}, indent=2))
    direct, through = summary["direct to mock"], summary[through_name]
    print("\nMedians:")
    for key in direct:
        print(f"  {key:<22} direct {_fmt(direct[key], 2):>12}   gateway {_fmt(through[key], 2):>12}")
    for quantile in ("p50", "p99"):
        key = f"ttft_{quantile}_ms"
        if direct[key] is not None and through[key] is not None:
            print(f"  added TTFT {quantile}: {through[key] - direct[key]:.2f} ms")
    print()
    print(markdown(args, summary))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    children: list[Child] = []
    try:
        with stopped_on_exit(children), tempfile.TemporaryDirectory(prefix="sluicegate-e2e-") as tmp:
            runs = measure(args, children, Path(tmp))
    except BenchmarkError as exc:
        print(f"e2e: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("e2e: interrupted; subprocesses stopped", file=sys.stderr)
        return 130
    report(args, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
