"""Fairness inside one worker, measured: /healthz latency and paced streams' token spacing, without and with a
firehose stream (upstream sends as fast as it can, client reads as fast as it can), in one run.

    .venv/bin/python benchmarks/fairness.py [--seconds 5] [--paced 50]

Prints medians over the probes and a markdown table for docs/benchmarks.md. Bounded: every phase stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.load import FIREHOSE_READER, probe_healthz_in_own_process  # noqa: E402
from tests.support.procs import start_gateway, start_mock  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def paced(url: str, tokens: int, interval: float) -> list[float]:
    arrivals = []
    async with aiohttp.ClientSession() as session, session.post(
        f"{url}/v1/chat/completions",
        json={"model": "m", "stream": True, "mock": {"tokens": tokens, "interval": interval}},
    ) as resp:
        while chunk := await resp.content.readany():
            now = time.monotonic()
            arrivals += [now] * (chunk.count(b'"content":"') - chunk.count(b'"content":""'))
    return [b - a for a, b in itertools.pairwise(arrivals)]


async def phase(url: str, port: int, seconds: float, n_paced: int, firehose: bool) -> dict[str, float]:
    reader = None
    if firehose:
        body = json.dumps({"model": "m", "stream": True, "mock": {"tokens": 50_000_000}}).encode()
        request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        reader = subprocess.Popen([sys.executable, "-c", FIREHOSE_READER, str(port), str(seconds + 1)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert reader.stdin is not None
        reader.stdin.write(request)
        reader.stdin.close()
        await asyncio.sleep(0.5)
    tokens = int(seconds / 0.02)
    streams = [asyncio.create_task(paced(url, tokens, 0.02)) for _ in range(n_paced)]
    health = await asyncio.to_thread(probe_healthz_in_own_process, port, int(seconds / 0.02), 0.02)
    gaps = [g for s in await asyncio.gather(*streams) for g in s]
    result = {"healthz_p50_ms": pct(health, 0.5) * 1e3, "healthz_p99_ms": pct(health, 0.99) * 1e3,
              "healthz_max_ms": max(health) * 1e3, "paced_itl_p50_ms": pct(gaps, 0.5) * 1e3,
              "paced_itl_p99_ms": pct(gaps, 0.99) * 1e3, "firehose_mb_per_s": 0.0}
    if reader is not None:
        reader.wait(seconds + 10)
        assert reader.stdout is not None
        result["firehose_mb_per_s"] = int(reader.stdout.read().split()[0]) / 1e6 / (seconds + 0.5)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--paced", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    mock = start_mock()
    with tempfile.TemporaryDirectory() as tmp:
        config = {"models": [{"name": "m", "deployments": [
            {"provider": "openai", "api_base": f"{mock.url}/v1", "model": "mock-model"}]}],
            "usage": {"dsn": str(Path(tmp) / "usage.db")}}
        gateway = start_gateway(yaml.safe_load(yaml.safe_dump(config)))
        port = int(gateway.url.rsplit(":", 1)[1])
        try:
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(args.repeats):
                for firehose in (False, True):
                    runs[firehose].append(await phase(gateway.url, port, args.seconds, args.paced, firehose))
        finally:
            gateway.stop()
            mock.stop()
    keys = list(runs[False][0])
    print("| firehose | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for firehose in (False, True):
        medians = {k: statistics.median(r[k] for r in runs[firehose]) for k in keys}
        print(f"| {'with' if firehose else 'without'} | " + " | ".join(f"{medians[k]:.1f}" for k in keys) + " |")


if __name__ == "__main__":
    asyncio.run(main())
