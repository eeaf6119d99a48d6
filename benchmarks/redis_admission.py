"""Added time to first token of admission through Redis vs the in-process state backend, on loopback.

    .venv/bin/python benchmarks/redis_admission.py [RUNS=3] [CONCURRENCY=1]

One gateway process in front of the mock upstream, a deployment with `max_concurrent: 1000` (so every request takes
a slot), `sluicegate bench --json`, 400 requests after 40 warm-up, alternating memory and redis; prints the medians.
Starts its own private redis-server (tests/support/redis_server.py) unless SLUICEGATE_TEST_REDIS_URL is set.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.procs import Proc, start_gateway, start_mock
from tests.support.redis_server import private_redis_server

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
CONCURRENCY = int(sys.argv[2]) if len(sys.argv) > 2 else 1


def bench(url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "sluicegate", "bench", "--url", f"{url}/v1", "--model", "m", "-c", str(CONCURRENCY),
         "-n", "400", "--warmup", "40", "--json", "--max-seconds", "60", "--extra-body", '{"mock": {"tokens": 5}}'],
        capture_output=True, text=True, timeout=90, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run(state: dict[str, Any], upstream: Proc) -> dict[str, Any]:
    config = {"models": [{"name": "m", "deployments": [{"provider": "openai", "api_base": f"{upstream.url}/v1",
                                                        "model": "x", "name": "d", "max_concurrent": 1000}]}],
              "state": state, "logging": {"access_log": False}}
    gateway = start_gateway(config)
    try:
        return bench(gateway.url)
    finally:
        gateway.stop()


def main() -> None:
    upstream = start_mock()
    results: dict[str, list[dict[str, Any]]] = {"memory": [], "redis": []}
    try:
        with private_redis_server() as redis:
            for i in range(RUNS):
                results["memory"].append(run({"backend": "memory"}, upstream))
                results["redis"].append(run({"backend": "redis", "redis_url": redis.url, "key_prefix": f"b{i}:"},
                                            upstream))
    finally:
        upstream.stop()
    for name, runs in results.items():
        p50 = statistics.median(r["ttft_s"]["p50"] * 1000 for r in runs)
        p99 = statistics.median(r["ttft_s"]["p99"] * 1000 for r in runs)
        print(f"concurrency {CONCURRENCY}, {name}: TTFT p50 {p50:.2f} ms, p99 {p99:.2f} ms (median of {RUNS})")


if __name__ == "__main__":
    main()
