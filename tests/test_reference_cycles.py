"""A finished request leaves no reference cycles behind, however it ended: its objects (aiohttp's request and
response, the task, the client stream, the deadlines, the pump, the upstream connection, the exception that ended
it) are freed by reference counting as it ends, not by a pass of the cyclic garbage collector. Under load such
passes, each freeing thousands of request objects at once, stopped every stream of the worker for 15-57 ms
(docs/benchmarks.md, "Garbage collection").

The gateway runs in this process (the same app `sluicegate serve` runs) so the collector can be asked directly;
the upstream is the mock upstream process, over real sockets.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sluicegate.config.loader import parse_config
from sluicegate.server.app import create_app
from tests.support.procs import Proc

# Types whose instances belong to one request; none of them may end up in a cycle.
_MODULES = ("sluicegate.", "aiohttp.web", "aiohttp.http_writer", "aiohttp.streams", "httptools")

Scenario = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


def answered(body: dict[str, object], status: int) -> Scenario:
    async def run(session: aiohttp.ClientSession, url: str) -> None:
        async with session.post(url, json={"model": "m", **body}) as resp:
            assert resp.status == status
            await resp.read()
    return run


async def client_leaves(session: aiohttp.ClientSession, url: str) -> None:
    resp = await session.post(url, json={"model": "m", "stream": True, "mock": {"tokens": 100, "interval": 0.01}})
    await resp.content.readany()
    resp.close()
    await asyncio.sleep(0.2)  # the gateway notices at its next write


SCENARIOS: dict[str, Scenario] = {
    "streamed": answered({"stream": True, "stream_options": {"include_usage": True}, "mock": {"tokens": 20}}, 200),
    "not streamed": answered({"stream": False, "mock": {"tokens": 20}}, 200),
    "upstream 500": answered({"stream": True, "mock": {"status": 500}}, 500),
    "upstream 500, not streamed": answered({"stream": False, "mock": {"status": 500}}, 500),
    "reset mid-stream": answered({"stream": True, "mock": {"tokens": 10, "reset_after": 3}}, 200),
    "idle deadline": answered({"stream": True, "mock": {"tokens": 10, "stall_after": 3}}, 200),
    "first-chunk deadline": answered({"stream": True, "mock": {"first_delay": 1}}, 504),
    "error event": answered({"stream": True, "mock": {"tokens": 10, "error_after": 3}}, 200),
    "unknown model": answered({"model": "nope", "stream": True}, 404),
    "client leaves": client_leaves,
}


async def test_finished_requests_leave_no_reference_cycles(
    mock_upstream: Proc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICEGATE_GC_TUNING", "0")  # the app must not freeze or retune this test process's GC
    config = parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "models": [{"name": "m", "retry": {"attempts": 1}, "timeouts": {"first_chunk": "300ms", "idle": "300ms"},
                    "deployments": [{"provider": "openai", "api_base": f"{mock_upstream.url}/v1",
                                     "model": "mock-model"}]}],
        "usage": {"dsn": str(tmp_path / "usage.db"), "flush_interval": "50ms"},
    })
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"

    leaks: dict[str, dict[str, int]] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for scenario in SCENARIOS.values():
                await scenario(session, url)  # first use creates what lives for the process (pools, caches)
            for name, scenario in SCENARIOS.items():
                gc.collect()
                gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept in gc.garbage, not freed
                try:
                    for _ in range(2):
                        await scenario(session, url)
                    await asyncio.sleep(0.05)  # let the request's last callbacks run
                    gc.collect()
                    found = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                                    if type(o).__module__.startswith(_MODULES))
                finally:
                    gc.set_debug(0)
                    gc.garbage.clear()
                if found:
                    leaks[name] = dict(found)
    finally:
        await runner.cleanup()
    assert not leaks, f"objects of finished requests were left in reference cycles: {leaks}"
