"""CPU cost of the mock upstream per streamed event, measured from outside its process.

Runs `sluicegate.mock.cli` in a subprocess (uvloop), streams to raw-socket readers in this process and reads
the mock's on-CPU time from /proc/<pid>/schedstat (nanoseconds, Linux only). Bounded: a few seconds.

    .venv/bin/python benchmarks/bench_mock_upstream.py [--tokens 200000] [--streams 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

_RUNNER = (
    "import argparse, sys; from sluicegate.mock import cli; p = argparse.ArgumentParser(); "
    "cli.configure_parser(p); sys.exit(cli.run(p.parse_args(sys.argv[1:])))"
)
_END = b"\r\n0\r\n\r\n"


def cpu_seconds(pid: int) -> float:
    """On-CPU time of the process's main thread (the mock is single-threaded)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def start_mock() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, "--port", "0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"mock did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def request_bytes(mock: dict[str, object]) -> bytes:
    body = json.dumps({"model": "m", "stream": True, "messages": [], "mock": mock}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def stream_once(port: int, mock: dict[str, object]) -> int:
    """Read one whole streamed response as fast as possible; returns the bytes received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(request_bytes(mock))
    received = 0
    tail = b""
    while True:
        data = await reader.read(1 << 20)
        if not data:
            break
        received += len(data)
        tail = (tail + data)[-len(_END) :]
        if tail == _END:
            break
    writer.close()
    return received


async def measure(port: int, pid: int, streams: int, mock: dict[str, object]) -> tuple[float, float]:
    """(CPU seconds of the mock, wall seconds) for `streams` concurrent streams."""
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(stream_once(port, mock) for _ in range(streams)))
    return cpu_seconds(pid) - cpu0, time.monotonic() - wall0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000, help="tokens of the firehose stream")
    parser.add_argument("--streams", type=int, default=200, help="concurrent paced streams")
    parser.add_argument("--paced-tokens", type=int, default=100, help="tokens per paced stream")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between paced tokens")
    args = parser.parse_args()
    proc, port = start_mock()
    try:
        asyncio.run(stream_once(port, {"tokens": 100}))  # warm-up
        scenarios = [
            ("firehose, 1 stream, interval 0", 1, {"tokens": args.tokens}),
            (
                f"paced, {args.streams} streams, interval {args.interval}",
                args.streams,
                {"tokens": args.paced_tokens, "interval": args.interval},
            ),
        ]
        for name, streams, mock in scenarios:
            cpu, wall = asyncio.run(measure(port, proc.pid, streams, mock))
            events = streams * (int(mock["tokens"]) + 3)  # + role chunk, finish chunk, [DONE]
            print(
                f"{name}: {events} events in {wall:.2f} s, mock CPU {cpu * 1e3:.0f} ms = "
                f"{cpu / events * 1e6:.2f} us/event"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
