"""Stopping never waits forever for a background task whose cancellation is lost in library code (turned into an
ordinary error that the loop's own error handling absorbs): a gunicorn worker once never exited after SIGTERM,
its gateway waiting for the retry-budget publisher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import pytest
from aiohttp import web

from sluicegate import background
from sluicegate.config.loader import parse_config
from sluicegate.server.app import create_app
from sluicegate.state.memory import MemoryBackend


async def _cancel_becomes_an_error() -> None:
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        raise RuntimeError("a library turned the cancellation into an error") from None


async def test_stop_gives_up_on_a_task_that_ignores_its_cancellation(caplog: pytest.LogCaptureFixture) -> None:
    closing = False

    async def stubborn() -> None:
        while not closing:  # a loop that survives errors, as background loops must, and checks a closing flag
            with contextlib.suppress(RuntimeError):
                await _cancel_becomes_an_error()

    quiet = asyncio.create_task(asyncio.sleep(60))
    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "sluicegate.background"):
        await background.stop([task, quiet, None], "test", wait=0.3)
    assert 0.25 < time.monotonic() - started < 2.0
    assert quiet.cancelled() and not task.done()
    assert "1 background task(s) did not end" in caplog.text
    closing = True  # what the real loops check: the next cancel-turned-error ends it
    task.cancel()
    await asyncio.wait_for(task, 2)


async def test_app_shutdown_ends_although_the_budget_publisher_loses_its_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publisher is the gateway's background loop around state calls; its state call here turns the
    cancellation into an error, as a client library may. The app's cleanup still ends, within the bounded wait."""
    monkeypatch.setenv("SLUICEGATE_GC_TUNING", "0")
    published = asyncio.Event()

    async def budget_available(self: MemoryBackend, key: str, ratio: float, min_per_second: float) -> float:
        published.set()
        await _cancel_becomes_an_error()
        return 0.0

    monkeypatch.setattr(MemoryBackend, "budget_available", budget_available)
    config = parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "models": [{"name": "m", "deployments": [{"provider": "openai", "api_base": "http://127.0.0.1:9/v1"}]}],
        "usage": {"dsn": str(tmp_path / "usage.db")},
    })
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    await asyncio.wait_for(published.wait(), 5)  # the publisher is inside its state call
    started = time.monotonic()
    await asyncio.wait_for(runner.cleanup(), 10)
    assert time.monotonic() - started < background.STOP_WAIT + 3
