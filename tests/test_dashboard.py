"""The live dashboard: the LiveStats aggregator, the SSE feed over real sockets, and the page in headless Chromium.

The gateway wiring is not needed here: a tiny aiohttp app serves `add_dashboard_routes` with a LiveStats fed by a
synthetic load (request_started/ended/rejected calls, bounded in time), the way the gateway will feed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sluicegate.observe.live import (
    HISTOGRAM_BINS,
    MAX_MODELS,
    OTHER_MODEL,
    PERCENTILE_SECONDS,
    RATE_SECONDS,
    LiveStats,
    _observe,
)
from sluicegate.server.dashboard import add_dashboard_routes
from tests.support.browser import ChromiumMissing, launch_chromium

STATS = web.AppKey("live_stats", LiveStats)
SCREENSHOT = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard.png"
BIN_ERROR = 0.032  # the histogram's documented relative error


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ShiftedClock:
    """time.monotonic() moved by `offset`, so a test can write history into the past."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


# --- the aggregator -------------------------------------------------------------------------------------------------

def test_snapshot_reports_in_flight_rates_outcomes_and_percentiles() -> None:
    clock = FakeClock(1000.0)
    stats = LiveStats(clock=clock)
    rng = random.Random(7)
    ttfts: list[float] = []
    for second in range(RATE_SECONDS):
        clock.now = 1000.0 + second + 0.25
        for _ in range(20):
            ttft = rng.uniform(0.05, 2.0)
            ttfts.append(ttft)
            stats.request_started("a")
            stats.request_ended("a", "completed", ttft, 0.01, 0.05, 100, 3.0)
        stats.request_started("b")
        stats.request_ended("b", "timeout_idle", None, None, None, None, 1.0)
        stats.rejected("b", "worker_cap")
    stats.request_started("a")
    stats.request_started("a")
    snap = stats.snapshot(1000.0 + RATE_SECONDS + 0.5)

    a, b, total = snap["models"]["a"], snap["models"]["b"], snap["total"]
    assert a["in_flight"] == 2 and b["in_flight"] == 0 and total["in_flight"] == 2
    assert a["requests_per_s"] == pytest.approx(20.0)
    assert a["tokens_per_s"] == pytest.approx(2000.0)
    assert total["requests_per_s"] == pytest.approx(21.0)
    assert a["outcomes"] == {"completed": 200}
    assert b["outcomes"] == {"timeout_idle": RATE_SECONDS}
    assert b["rejections"] == {"worker_cap": RATE_SECONDS}
    assert total["outcomes"] == {"completed": 200, "timeout_idle": RATE_SECONDS}
    assert total["requests"] == 200 + RATE_SECONDS
    assert a["duration_mean"] == pytest.approx(3.0)
    for q, key in ((0.5, "ttft_p50"), (0.99, "ttft_p99")):
        assert a[key] == pytest.approx(exact_percentile(ttfts, q), rel=BIN_ERROR)
        assert total[key] == a[key]
    assert a["itl_p50"] == pytest.approx(0.01, rel=BIN_ERROR)
    assert a["itl_p99"] == pytest.approx(0.05, rel=BIN_ERROR)
    assert b["ttft_p50"] is None and b["itl_p99"] is None
    series = a["series"]
    assert all(len(s) == stats.window_seconds for s in series.values())
    assert series["requests"][-RATE_SECONDS:] == [20] * RATE_SECONDS
    assert series["requests"][:-RATE_SECONDS] == [0] * (stats.window_seconds - RATE_SECONDS)
    assert b["series"]["errors"][-RATE_SECONDS:] == [2] * RATE_SECONDS  # one timeout + one rejection per second
    assert series["ttft_mean"][-1] is not None and series["ttft_mean"][0] is None
    json.dumps(snap)  # plain JSON types only


def test_percentiles_match_exact_ones_within_the_bin_error() -> None:
    clock = FakeClock(5000.0)
    stats = LiveStats(clock=clock)
    rng = random.Random(11)
    values = [rng.lognormvariate(-3.0, 1.5) for _ in range(5000)]
    for i, value in enumerate(values):
        clock.now = 5000.0 + i * 0.01  # 50 s of traffic, inside the percentile window
        stats.request_started("m")
        stats.request_ended("m", "completed", value, value, value, 1, 1.0)
    snap = stats.snapshot(clock.now)["models"]["m"]
    for q, key in ((0.5, "ttft_p50"), (0.99, "ttft_p99"), (0.5, "itl_p50"), (0.99, "itl_p99")):
        assert snap[key] == pytest.approx(exact_percentile(values, q), rel=BIN_ERROR), key


def test_old_seconds_leave_the_percentile_window_and_then_the_window() -> None:
    clock = FakeClock(2000.0)
    stats = LiveStats(window_seconds=120, clock=clock)
    stats.request_started("m")
    stats.request_ended("m", "completed", 0.2, 0.01, 0.02, 50, 1.0)
    stats.rejected("m", "key_cap")

    recent = stats.snapshot(2000.0 + PERCENTILE_SECONDS - 1)["models"]["m"]
    assert recent["ttft_p50"] == pytest.approx(0.2, rel=BIN_ERROR)
    later = stats.snapshot(2000.0 + PERCENTILE_SECONDS + 1)["models"]["m"]
    assert later["ttft_p50"] is None and later["itl_p50"] is None
    assert later["outcomes"] == {"completed": 1} and later["rejections"] == {"key_cap": 1}
    assert later["series"]["requests"].count(1) == 1
    gone = stats.snapshot(2000.0 + 120 + 1)["models"]["m"]
    assert gone["outcomes"] == {} and gone["rejections"] == {} and gone["requests"] == 0
    assert sum(gone["series"]["requests"]) == 0

    # A ring slot reused by a newer second starts from zero.
    clock.now = 2000.0 + 121
    stats.request_started("m")
    stats.request_ended("m", "client_disconnected", None, None, None, None, 0.5)
    assert stats.snapshot(clock.now)["models"]["m"]["outcomes"] == {"client_disconnected": 1}


def test_in_flight_series_is_rebuilt_from_starts_and_ends() -> None:
    clock = FakeClock(100.0)
    stats = LiveStats(window_seconds=30, clock=clock)
    for _ in range(5):
        stats.request_started("m")
    clock.now = 102.5
    for _ in range(2):
        stats.request_ended("m", "completed", 0.1, None, None, 10, 2.5)
    clock.now = 104.2
    stats.request_started("m")  # in the second in progress: counted now, not yet in the series
    series = stats.snapshot(104.6)["models"]["m"]["series"]["in_flight"]
    # series[-1] is second 103, series[-2] second 102, ...
    assert series[-5:] == [0, 5, 5, 3, 3]
    assert stats.snapshot(104.6)["models"]["m"]["in_flight"] == 4


def test_memory_stays_bounded_by_models_and_bins() -> None:
    stats = LiveStats(clock=FakeClock())
    for i in range(MAX_MODELS + 10):
        stats.request_started(f"model-{i}")
    names = stats.snapshot(1000.5)["models"]
    assert len(names) == MAX_MODELS + 1 and names[OTHER_MODEL]["in_flight"] == 10

    hist: dict[int, int] = {}
    rng = random.Random(3)
    for _ in range(20_000):
        _observe(hist, 10 ** rng.uniform(-12, 12))
    for extreme in (0.0, -1.0, 1e300, 5e-324):
        _observe(hist, extreme)
    assert len(hist) <= HISTOGRAM_BINS


def test_request_ended_is_cheap() -> None:
    stats = LiveStats()
    calls = 50_000
    for _ in range(calls):
        stats.request_started("m")
    started = time.perf_counter()
    for i in range(calls):
        stats.request_ended("m", "completed", 0.1 + (i % 97) * 0.01, 0.02, 0.08, 250, 4.0)
    per_call = (time.perf_counter() - started) / calls
    # ~1.3 us measured on the dev machine; the bound only catches an accidental O(n) or allocation per call.
    assert per_call < 20e-6, f"request_ended took {per_call * 1e6:.1f} us per call"


# --- the HTTP side --------------------------------------------------------------------------------------------------

class CountingStats(LiveStats):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snapshots = 0

    def snapshot(self, now: float) -> dict[str, Any]:
        self.snapshots += 1
        return super().snapshot(now)


@dataclass
class ModelProfile:
    name: str
    rate: float  # requests started per second
    ttft: float  # median seconds
    itl: float  # median seconds between tokens
    tokens: int
    outcomes: tuple[tuple[str, float], ...]
    rejection_rate: float = 0.0


PROFILES = (
    ModelProfile("gpt-4o", 12.0, 0.32, 0.018, 320,
                 (("completed", 0.93), ("client_disconnected", 0.05), ("upstream_error", 0.02))),
    ModelProfile("claude-sonnet", 6.0, 0.55, 0.026, 420,
                 (("completed", 0.96), ("timeout_idle", 0.03), ("client_disconnected", 0.01))),
    ModelProfile("llama-3-8b", 20.0, 0.07, 0.007, 180,
                 (("completed", 0.9), ("timeout_first_chunk", 0.06), ("client_disconnected", 0.04)),
                 rejection_rate=1.5),
)


class SyntheticLoad:
    """Calls LiveStats the way the gateway does, once per request, at a few dozen requests per second."""

    def __init__(self, stats: LiveStats, seed: int = 5) -> None:
        self.stats = stats
        self.rng = random.Random(seed)
        self.open: list[tuple[float, ModelProfile]] = []  # (end time on the stats clock, model)
        self.started = 0

    def _end(self, profile: ModelProfile) -> None:
        rng = self.rng
        names, weights = zip(*profile.outcomes, strict=True)
        outcome = rng.choices(names, weights)[0]
        ttft = rng.lognormvariate(math.log(profile.ttft), 0.45) if outcome != "timeout_first_chunk" else None
        itl50 = rng.lognormvariate(math.log(profile.itl), 0.25) if ttft is not None else None
        itl99 = itl50 * rng.uniform(2.0, 5.0) if itl50 is not None else None
        tokens = int(profile.tokens * rng.uniform(0.3, 1.7)) if ttft is not None else None
        self.stats.request_ended(profile.name, outcome, ttft, itl50, itl99, tokens, rng.uniform(0.5, 3.0))

    def step(self, now: float, dt: float, intensity: float = 1.0) -> None:
        rng = self.rng
        for profile in PROFILES:
            for _ in range(self._poisson(profile.rate * dt * intensity)):
                self.stats.request_started(profile.name)
                self.started += 1
                self.open.append((now + rng.uniform(0.3, 3.0), profile))
            for _ in range(self._poisson(profile.rejection_rate * dt * intensity)):
                self.stats.rejected(profile.name, rng.choice(("worker_cap", "key_cap")))
        still_open = []
        for end, profile in self.open:
            if end <= now:
                self._end(profile)
            else:
                still_open.append((end, profile))
        self.open = still_open

    def _poisson(self, mean: float) -> int:
        count, threshold, product = 0, math.exp(-mean), self.rng.random()
        while product > threshold:
            count += 1
            product *= self.rng.random()
        return count

    def backfill(self, clock: ShiftedClock, seconds: int) -> None:
        """Writes `seconds` of varying traffic into the past, so the sparklines have a history."""
        steps_per_second = 10
        for step in range(seconds * steps_per_second):
            clock.offset = -seconds + step / steps_per_second
            intensity = 0.6 + 0.4 * math.sin(step / (steps_per_second * 9.0))
            self.step(clock(), 1 / steps_per_second, intensity)
        clock.offset = 0.0

    async def run(self, clock: ShiftedClock, stop: asyncio.Event, max_seconds: float = 60.0) -> None:
        dt = 0.05
        deadline = time.monotonic() + max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            self.step(clock(), dt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), dt)


@contextlib.asynccontextmanager
async def dashboard_server(stats: LiveStats) -> AsyncIterator[str]:
    app = web.Application()
    app[STATS] = stats
    add_dashboard_routes(app, STATS)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def read_events(response: aiohttp.ClientResponse, seconds: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for line in response.content:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[len(b"data: "):]))
    return events


async def test_dashboard_page_is_one_self_contained_document() -> None:
    async with dashboard_server(LiveStats()) as url, aiohttp.ClientSession() as session, \
            session.get(f"{url}/dashboard") as response:
        body = await response.text()
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Cache-Control"] == "no-cache"
    assert "EventSource(" in body
    for external in ("http://", "https://", "<link", "<script src", "@import"):
        assert external not in body, f"the page must not load external assets ({external!r})"


async def test_event_feed_sends_one_shared_snapshot_per_second() -> None:
    stats = CountingStats()
    stats.request_started("m")
    viewers = 3
    async with dashboard_server(stats) as url, aiohttp.ClientSession() as session:
        responses = [await session.get(f"{url}/dashboard/events") for _ in range(viewers)]
        try:
            for response in responses:
                assert response.status == 200
                assert response.content_type == "text/event-stream"
                assert response.headers["Cache-Control"] == "no-cache"
            started = time.monotonic()
            received = await asyncio.gather(*(read_events(r, 3.4) for r in responses))
            elapsed = time.monotonic() - started
        finally:
            for response in responses:
                response.close()
    for events in received:
        assert 2 <= len(events) <= 6, f"{len(events)} events in {elapsed:.1f} s"
        assert events[-1]["total"]["in_flight"] == 1 and "m" in events[-1]["models"]
        assert events[-1]["time"] > events[0]["time"]
    # One snapshot per tick for all viewers (per-viewer timers would have made ~3x as many).
    assert stats.snapshots <= elapsed + 2, f"{stats.snapshots} snapshots in {elapsed:.1f} s for {viewers} viewers"


async def test_event_feed_stops_when_the_last_viewer_leaves() -> None:
    stats = CountingStats()
    async with dashboard_server(stats) as url, aiohttp.ClientSession() as session:
        response = await session.get(f"{url}/dashboard/events")
        assert len(await read_events(response, 1.5)) >= 1
        response.close()
        await asyncio.sleep(2.5)  # the server notices at its next write, the ticker at its next tick
        settled = stats.snapshots
        await asyncio.sleep(2.0)
        assert stats.snapshots == settled, "the ticker kept running with nobody watching"

        # A new viewer starts it again and gets a frame at once.
        response = await session.get(f"{url}/dashboard/events")
        events = await read_events(response, 0.8)
        response.close()
        assert len(events) == 1


async def test_shutdown_ends_open_feeds_without_waiting_for_viewers() -> None:
    app = web.Application()
    app[STATS] = LiveStats()
    add_dashboard_routes(app, STATS)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"http://{host}:{port}/dashboard/events")
        assert (await response.content.readline()).startswith(b"data: ")
        started = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - started < 3.0, "shutdown waited for the open dashboard feed"
        async with asyncio.timeout(5):
            await response.content.read()  # the stream ended
        response.close()


# --- the page in a real browser --------------------------------------------------------------------------------------

async def test_dashboard_in_headless_chromium_shows_moving_numbers() -> None:
    clock = ShiftedClock()
    stats = LiveStats(clock=clock)
    load = SyntheticLoad(stats)
    load.backfill(clock, 150)
    stop = asyncio.Event()
    async with dashboard_server(stats) as url:
        feeder = asyncio.get_running_loop().create_task(load.run(clock, stop))
        try:
            async with launch_chromium() as browser:
                page = await browser.new_page()
                await page.goto(f"{url}/dashboard")
                live = await page.wait_for(
                    "document.getElementById('status').textContent === 'live' && "
                    "document.querySelectorAll('#models-body tr').length === 3 && "
                    "document.getElementById('total-requests').textContent !== '\u2013'", within=10)
                assert live, f"the page did not go live: status={await page.text('#status')!r}"
                first = await page.text("#total-requests")
                first_meta = await page.text("#meta")
                await asyncio.sleep(2.5)
                second = await page.text("#total-requests")
                assert first is not None and second is not None
                assert int(second.replace(",", "")) > int(first.replace(",", "")), (first, second)
                assert await page.text("#meta") != first_meta
                for model in ("gpt-4o", "claude-sonnet", "llama-3-8b"):
                    ttft = await page.text(f"tr[data-model='{model}'] .ttft-p50")
                    assert ttft is not None and ttft.endswith("ms"), (model, ttft)
                assert int((await page.text("#total-in-flight") or "0").replace(",", "")) > 0
                sparkline = await page.evaluate(
                    "document.querySelector('#spark-requests path.line').getAttribute('d').length")
                assert sparkline > 100
                await page.screenshot(SCREENSHOT)
        except ChromiumMissing as missing:
            pytest.fail(str(missing))
        finally:
            stop.set()
            await feeder
    assert SCREENSHOT.stat().st_size > 10_000
    assert load.started > 0


async def test_real_gateway_dashboard_in_headless_chromium_moves_under_load(mock_upstream: Any) -> None:
    """The same page served by a real gateway process, with numbers driven by real streams through it."""
    from tests.support.procs import start_gateway

    proc = start_gateway({"models": [{"name": "live-model", "deployments": [
        {"provider": "openai", "api_base": f"{mock_upstream.url}/v1", "model": "mock-model"}]}]})
    stop = asyncio.Event()

    async def load() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.post(f"{proc.url}/v1/chat/completions", json={
                        "model": "live-model", "stream": True,
                        # A first token 10 ms out keeps the page's TTFT in milliseconds (the gateway alone is <1 ms).
                        "mock": {"tokens": 10, "interval": 0.02, "first_delay": 0.01}}) as resp:
                    await resp.read()

    loaders = [asyncio.get_running_loop().create_task(load()) for _ in range(4)]
    try:
        async with launch_chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{proc.url}/dashboard")
            live = await page.wait_for(
                "document.getElementById('status').textContent === 'live' && "
                "document.querySelector(\"tr[data-model='live-model']\") !== null", within=15)
            assert live, f"the page did not go live: status={await page.text('#status')!r}"
            first = await page.text("#total-requests")
            await asyncio.sleep(3)
            second = await page.text("#total-requests")
            assert first is not None and second is not None
            assert int(second.replace(",", "")) > int(first.replace(",", "")), (first, second)
            ttft = await page.text("tr[data-model='live-model'] .ttft-p50")
            assert ttft is not None and ttft.endswith("ms"), ttft
            await page.screenshot(SCREENSHOT.with_name("dashboard-gateway.png"))
    except ChromiumMissing as missing:
        pytest.fail(str(missing))
    finally:
        stop.set()
        for task in loaders:
            task.cancel()
        await asyncio.gather(*loaders, return_exceptions=True)
        proc.stop()
