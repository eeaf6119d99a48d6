"""A finished request leaves no reference cycles behind: its objects (aiohttp's request and response, the task,
the client stream, the deadlines, the pump) are freed by reference counting as it ends, not by a pass of the
cyclic garbage collector. Under load such passes, each freeing thousands of request objects at once, stopped
every stream of the worker for 15-57 ms (docs/benchmarks.md, "Garbage collection").

The gateway runs in this process (the same app `sluicegate serve` runs) so the collector can be asked directly;
the upstream is the mock upstream process, over real sockets.
"""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sluicegate.config.loader import parse_config
from sluicegate.server.app import create_app
from tests.support.procs import Proc

# Types whose instances belong to one request; none of them may end up in a cycle.
_MODULES = ("sluicegate.", "aiohttp.web", "aiohttp.http_writer")


async def test_finished_requests_leave_no_reference_cycles(
    mock_upstream: Proc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICEGATE_GC_TUNING", "0")  # the app must not freeze or retune this test process's GC
    config = parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "models": [{"name": "m", "deployments": [{"provider": "openai", "api_base": f"{mock_upstream.url}/v1",
                                                  "model": "mock-model"}]}],
        "usage": {"dsn": str(tmp_path / "usage.db"), "flush_interval": "50ms"},
    })
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"

    async def requests(session: aiohttp.ClientSession) -> None:
        for stream in (True, True, False):
            body = {"model": "m", "stream": stream, "stream_options": {"include_usage": True},
                    "mock": {"tokens": 20}}
            async with session.post(url, json=body) as resp:
                assert resp.status == 200
                await resp.read()

    leaked: Counter[str] = Counter()
    try:
        async with aiohttp.ClientSession() as session:
            await requests(session)  # first use creates what lives for the process (pools, caches)
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept in gc.garbage, not freed
            try:
                for _ in range(5):
                    await requests(session)
                gc.collect()
                for obj in gc.garbage:
                    kind = type(obj)
                    if kind.__module__.startswith(_MODULES):
                        leaked[f"{kind.__module__}.{kind.__qualname__}"] += 1
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
    finally:
        await runner.cleanup()
    assert not leaked, f"objects of finished requests were left in reference cycles: {dict(leaked)}"
