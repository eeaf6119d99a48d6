"""Admission caps that are never exceeded, retries that cannot stampede, routing, cooldowns, fallbacks and API keys —
against real mock upstream processes and real gateway processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from tests.support.http import get_json, metric, mock_request, wait_for
from tests.support.procs import Proc, start_gateway, start_mock


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deployment(url: str, name: str, **extra: object) -> dict[str, object]:
    return {"provider": "openai", "api_base": f"{url}/v1", "model": "mock-model", "name": name, **extra}


def config(*models: dict[str, object], **top: object) -> dict[str, object]:
    return {"models": list(models), **top}


async def chat(url: str, mock: dict[str, object] | None = None, *, model: str = "m", stream: bool = True,
               headers: dict[str, str] | None = None, user: str | None = None) -> tuple[int, dict[str, str], bytes]:
    payload: dict[str, object] = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]}
    if mock:
        payload["mock"] = mock
    if user:
        payload["user"] = user
    async with aiohttp.ClientSession() as session, session.post(
        f"{url}/v1/chat/completions", json=payload, headers=headers or {}
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()



async def settled(proc: Proc, within: float = 10.0) -> bool:
    """No stream and no upstream request of the gateway in flight (the gauges come back to zero)."""
    def idle() -> bool:
        return (metric(proc.url, "sluicegate_streams_in_flight") == 0
                and metric(proc.url, "sluicegate_upstream_in_flight") == 0)
    return bool(await asyncio.to_thread(wait_for, idle, within))

@pytest.fixture
def mocks() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


# --- admission ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("caps", [(8,), (5, 3)], ids=["one-deployment", "two-deployments"])
async def test_caps_never_exceeded_under_random_faults(mocks: list[Proc], caps: tuple[int, ...]) -> None:
    """Hundreds of concurrent requests with resets, stalls, disconnects and 5xx against deployment caps of 8 in
    all (one deployment, or two that requests queue for at once) and a worker cap of 40: each upstream's own
    high-water mark never exceeds its cap, every gauge ends at zero, every slot comes back."""
    upstreams = [start_mock() for _ in caps]
    mocks.extend(upstreams)
    proc = start_gateway(config(
        {"name": "m", "deployments": [deployment(upstream.url, f"capped-{i}", max_concurrent=cap)
                                      for i, (upstream, cap) in enumerate(zip(upstreams, caps, strict=True))],
         "queue_timeout": "1s", "timeouts": {"first_chunk": "400ms", "idle": "400ms"},
         "retry": {"attempts": 2, "backoff_initial": "10ms"},
         "allowed_fails": 10_000},  # the faults are on purpose: no cooldown (two deployments could cool down)
        server={"max_streams": 40},
    ))
    rng = random.Random(7)
    faults: list[dict[str, object]] = [
        {"tokens": 10, "interval": 0.01}, {"tokens": 10, "reset_after": 3}, {"tokens": 10, "stall_after": 2},
        {"status": 503}, {"tokens": 20, "interval": 0.02}, {"first_delay": 1.0}, {"error_after": 0},
    ]
    statuses: Counter[int] = Counter()

    async def one(i: int) -> None:
        mock = dict(rng.choice(faults))
        if i % 7 == 0:  # a client that disconnects mid-stream
            async with aiohttp.ClientSession() as session:
                try:
                    resp = await session.post(f"{proc.url}/v1/chat/completions",
                                              json={"model": "m", "stream": True, "mock": {"tokens": 50,
                                                                                             "interval": 0.02}})
                    await resp.content.readany()
                    resp.close()
                    statuses[resp.status] += 1
                except aiohttp.ClientError:
                    statuses[0] += 1
            return
        status, _, _ = await chat(proc.url, mock)
        statuses[status] += 1

    try:
        await asyncio.gather(*(one(i) for i in range(300)))
        served = 0
        for upstream, cap in zip(upstreams, caps, strict=True):
            stats = get_json(f"{upstream.url}/_mock/stats")
            assert stats["high_water"] <= cap, stats
            assert stats["requests"] > 0, stats
            served += stats["requests"]
        assert served > 50
        assert statuses[200] > 0 and statuses[429] > 0, statuses  # some streamed, some were refused after the queue
        assert set(statuses) <= {0, 200, 429, 502, 503, 504}, statuses

        assert await settled(proc)
        assert metric(proc.url, "sluicegate_concurrency_rejections_total", scope="deployment",
                      reason="queue_timeout") > 0
        # Every slot came back: a burst that fits the caps streams at once.
        results = await asyncio.gather(*(chat(proc.url, {"tokens": 2}) for _ in range(8)))
        assert [r[0] for r in results] == [200] * 8
    finally:
        proc.stop()


async def test_queue_timeout_zero_rejects_at_once_and_longer_queues(mocks: list[Proc]) -> None:
    upstream = start_mock()
    mocks.append(upstream)
    proc = start_gateway(config(
        {"name": "fast", "deployments": [deployment(upstream.url, "one", max_concurrent=1)], "queue_timeout": 0},
        {"name": "queued", "deployments": [deployment(upstream.url, "two", max_concurrent=1)], "queue_timeout": "3s"},
    ))
    try:
        slow = asyncio.create_task(chat(proc.url, {"tokens": 10, "interval": 0.1}, model="fast"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        status, headers, raw = await chat(proc.url, {"tokens": 1}, model="fast")
        assert status == 429 and time.monotonic() - started < 0.5
        assert headers["Retry-After"] == "1"
        assert json.loads(raw)["error"]["code"] == "deployment_at_capacity"
        assert (await slow)[0] == 200

        first = asyncio.create_task(chat(proc.url, {"tokens": 10, "interval": 0.1}, model="queued"))
        await asyncio.sleep(0.3)
        status, _, _ = await chat(proc.url, {"tokens": 1}, model="queued")  # waits for the first one
        assert status == 200
        assert (await first)[0] == 200
    finally:
        proc.stop()


async def test_client_gone_while_queued_releases_everything(mocks: list[Proc]) -> None:
    upstream = start_mock()
    mocks.append(upstream)
    proc = start_gateway(config({"name": "m", "deployments": [deployment(upstream.url, "one", max_concurrent=1)],
                                 "queue_timeout": "10s"}))
    try:
        holder = asyncio.create_task(chat(proc.url, {"tokens": 20, "interval": 0.05}))
        await asyncio.sleep(0.3)
        waiter = asyncio.create_task(chat(proc.url, {"tokens": 1}))
        await asyncio.sleep(0.3)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await asyncio.to_thread(wait_for, lambda: metric(
            proc.url, "sluicegate_concurrency_rejections_total", reason="client_gone") == 1, 5.0)
        assert (await holder)[0] == 200
        assert await asyncio.to_thread(wait_for, lambda: metric(proc.url, "sluicegate_streams_in_flight") == 0, 5.0)
        assert (await chat(proc.url, {"tokens": 1}))[0] == 200  # the slot is free again
    finally:
        proc.stop()


async def test_queued_requests_are_served_in_arrival_order_across_deployments(mocks: list[Proc]) -> None:
    """Two deployments, one slot each, both taken: six requests queue, 60 ms apart. Each queues on both deployments
    at once, so whichever slot frees goes to the request that has waited longest: they reach the upstream in arrival
    order, the cap of one per deployment holds, and a client that leaves while queued is counted once and takes no
    slot with it."""
    upstream = start_mock()
    mocks.append(upstream)
    proc = start_gateway(config({"name": "m", "queue_timeout": "10s", "deployments": [
        deployment(upstream.url, "a", max_concurrent=1), deployment(upstream.url, "b", max_concurrent=1)]}))
    try:
        # The slots free up at 1.0 s and 1.3 s; each queued request holds one for 0.5 s: frees >= 0.2 s apart.
        first = [asyncio.create_task(chat(proc.url, {"tokens": tokens, "interval": 0.1, "tag": f"o{tokens}"}))
                 for tokens in (10, 13)]
        await asyncio.to_thread(wait_for, lambda: mock_request(upstream.url, "o10") and mock_request(upstream.url,
                                                                                                      "o13"), 5.0)
        queued = []
        for i in range(6):
            queued.append(asyncio.create_task(chat(proc.url, {"tokens": 5, "interval": 0.1, "tag": f"q{i}"})))
            await asyncio.sleep(0.06)
            if i == 2:  # a client that leaves while queued, between q2 and q3
                leaving = asyncio.create_task(chat(proc.url, {"tokens": 5, "interval": 0.1, "tag": "gone"}))
                await asyncio.sleep(0.06)
                leaving.cancel()
                await asyncio.gather(leaving, return_exceptions=True)
        answers = await asyncio.gather(*first, *queued)
        assert [status for status, _, _ in answers] == [200] * 8
        started = [mock_request(upstream.url, f"q{i}")["started"] for i in range(6)]  # type: ignore[index]
        assert started == sorted(started), started
        assert mock_request(upstream.url, "gone") is None
        assert get_json(f"{upstream.url}/_mock/stats")["high_water"] == 2
        assert metric(proc.url, "sluicegate_concurrency_rejections_total", reason="client_gone") == 1
        assert metric(proc.url, "sluicegate_concurrency_rejections_total", reason="queue_timeout") == 0
        assert await settled(proc)
    finally:
        proc.stop()


# --- retries -------------------------------------------------------------------------------------------------------
async def test_retry_goes_to_another_deployment(mocks: list[Proc]) -> None:
    good = start_mock()
    slow = start_mock("--first-delay", "5")
    failing = start_mock("--defaults", '{"error_after": 0}')
    mocks += [good, slow, failing]
    proc = start_gateway(config(
        {"name": "refused", "deployments": [deployment(f"http://127.0.0.1:{closed_port()}", "down"),
                                            deployment(good.url, "good")]},
        {"name": "slow", "deployments": [deployment(slow.url, "slow"), deployment(good.url, "good2")],
         "timeouts": {"first_chunk": "300ms"}},
        {"name": "errors", "deployments": [deployment(failing.url, "failing"), deployment(good.url, "good3")]},
    ))
    try:
        for model, winner in (("refused", "good"), ("slow", "good2"), ("errors", "good3")):
            for _ in range(2):  # round robin starts on either deployment; both orders must end on the good one
                status, headers, raw = await chat(proc.url, {"tokens": 3}, model=model)
                assert status == 200, raw
                assert headers["x-sluicegate-deployment"] == winner
                assert raw.rstrip().endswith(b"data: [DONE]")
        assert metric(proc.url, "sluicegate_retries_total", outcome="succeeded") >= 3
    finally:
        proc.stop()



async def test_a_retry_waiting_for_a_slot_is_not_cut_by_the_failed_attempts_first_chunk_deadline(
        mocks: list[Proc]) -> None:
    """first_chunk applies to each attempt: after the first attempt fails (503), the retry may wait for a slot
    (up to queue_timeout) longer than first_chunk without being cut as a first-chunk timeout."""
    failing = start_mock("--defaults", '{"status": 503}')
    good = start_mock()
    mocks += [failing, good]
    deployments = [deployment(failing.url, "down"), deployment(good.url, "capped", max_concurrent=1)]
    proc = start_gateway(config({"name": "m", "queue_timeout": "5s", "timeouts": {"first_chunk": "500ms"},
                                 "retry": {"backoff_initial": "10ms"}, "deployments": deployments}))
    try:
        occupier = asyncio.create_task(chat(proc.url, {"tokens": 12, "interval": 0.1}))
        await asyncio.to_thread(wait_for, lambda: get_json(f"{good.url}/_mock/stats")["active"] == 1, 5.0)
        started = time.monotonic()
        status, headers, raw = await chat(proc.url, {"tokens": 2})
        assert status == 200, raw
        assert headers["x-sluicegate-deployment"] == "capped"
        assert time.monotonic() - started > 0.6  # it waited for the occupier's slot, longer than first_chunk
        assert (await occupier)[0] == 200
        assert metric(proc.url, "sluicegate_concurrency_rejections_total") == 0
        assert await settled(proc)
    finally:
        proc.stop()

async def test_outage_retries_stay_within_budget(mocks: list[Proc]) -> None:
    """Every upstream answers 503. Without a budget, 3 attempts would triple the load; with ratio 0.2 and a floor
    of 2/s, upstream attempts stay near requests x 1.2 plus the floor."""
    down = [start_mock("--defaults", '{"status": 503}') for _ in range(2)]
    mocks += down
    proc = start_gateway(config({
        "name": "m", "deployments": [deployment(d.url, f"d{i}") for i, d in enumerate(down)],
        "retry": {"attempts": 3, "backoff_initial": "1ms", "backoff_max": "5ms"},
        "retry_budget": {"ratio": 0.2, "min_per_second": 2}, "allowed_fails": 1000,
    }))
    try:
        requests = 0
        started = time.monotonic()
        for _ in range(10):  # steady load: 20 requests every 100 ms
            results = await asyncio.gather(*(chat(proc.url, stream=False) for _ in range(20)))
            requests += len(results)
            assert all(r[0] == 503 for r in results)
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
        attempts = sum(get_json(f"{d.url}/_mock/stats")["requests"] for d in down)
        floor = 2 * elapsed + 2 + 1  # the floor refill, the initial second of floor, rounding
        assert attempts <= requests * 1.2 + floor, (attempts, requests, elapsed)
        assert attempts < requests * 2  # far from requests x attempts
        assert metric(proc.url, "sluicegate_retries_total", outcome="budget_exhausted") > 0
    finally:
        proc.stop()


async def test_retry_after_is_honoured_for_the_same_deployment(mocks: list[Proc]) -> None:
    limited = start_mock("--defaults", '{"status": 429, "retry_after": 0.4}')
    mocks.append(limited)
    proc = start_gateway(config({"name": "m", "deployments": [deployment(limited.url, "only")],
                                 "retry": {"attempts": 2, "backoff_initial": "1ms", "backoff_max": "2s"}}))
    try:
        started = time.monotonic()
        status, headers, _ = await chat(proc.url)
        elapsed = time.monotonic() - started
        assert status == 429 and headers["x-sluicegate-attempts"] == "2"
        assert get_json(f"{limited.url}/_mock/stats")["requests"] == 2
        assert elapsed >= 0.4, elapsed  # waited out the upstream's Retry-After before asking it again
    finally:
        proc.stop()


# --- routing, cooldown, fallbacks --------------------------------------------------------------------------------
async def test_cooldown_takes_a_failing_deployment_out_and_a_probe_brings_it_back(mocks: list[Proc]) -> None:
    good = start_mock()
    mocks.append(good)
    port = closed_port()
    proc = start_gateway(config({
        "name": "m", "deployments": [deployment(f"http://127.0.0.1:{port}", "down"), deployment(good.url, "good")],
        "allowed_fails": 2, "cooldown": "1s", "retry": {"attempts": 2},
    }))
    try:
        for _ in range(4):
            assert (await chat(proc.url, {"tokens": 1}))[0] == 200
        down_attempts = metric(proc.url, "sluicegate_upstream_requests_total", deployment="down")
        assert down_attempts == 2  # two failures, then out of the pool
        for _ in range(6):
            status, headers, _ = await chat(proc.url, {"tokens": 1})
            assert status == 200 and headers["x-sluicegate-attempts"] == "1"
        assert metric(proc.url, "sluicegate_upstream_requests_total", deployment="down") == 2
        await asyncio.sleep(1.2)  # cooldown over: one probe request goes to it
        for _ in range(4):
            assert (await chat(proc.url, {"tokens": 1}))[0] == 200
        assert metric(proc.url, "sluicegate_upstream_requests_total", deployment="down") == 3
    finally:
        proc.stop()


async def test_fallback_model_serves_when_every_deployment_failed(mocks: list[Proc]) -> None:
    good = start_mock()
    mocks.append(good)
    proc = start_gateway(config(
        {"name": "primary", "deployments": [deployment(f"http://127.0.0.1:{closed_port()}", "down")],
         "fallbacks": ["backup"], "retry": {"attempts": 1}},
        {"name": "backup", "deployments": [deployment(good.url, "backup-dep")]},
    ))
    try:
        client = openai.AsyncOpenAI(base_url=f"{proc.url}/v1", api_key="x", max_retries=0)
        response = await client.chat.completions.with_raw_response.create(
            model="primary", messages=[{"role": "user", "content": "x"}], extra_body={"mock": {"text": "from backup"}})
        assert response.headers["x-sluicegate-deployment"] == "backup-dep"
        assert response.parse().choices[0].message.content == "from backup"
        await client.close()
    finally:
        proc.stop()


async def test_routing_strategies(mocks: list[Proc]) -> None:
    fast, slow = start_mock(), start_mock("--first-delay", "0.15")
    mocks += [fast, slow]
    proc = start_gateway(config(
        {"name": "sticky", "routing": "sticky", "deployments": [deployment(fast.url, "a"), deployment(slow.url, "b")]},
        {"name": "weighted", "routing": "weighted",
         "deployments": [deployment(fast.url, "w1", weight=1), deployment(fast.url, "w9", weight=9)]},
        {"name": "ttft", "routing": "lowest_ttft",
         "deployments": [deployment(slow.url, "slow"), deployment(fast.url, "fast")]},
        {"name": "rr", "deployments": [deployment(fast.url, "r1"), deployment(fast.url, "r2")]},
        {"name": "lif", "routing": "least_in_flight",
         "deployments": [deployment(fast.url, "l1"), deployment(fast.url, "l2")]},
    ))
    try:
        for user in ("alice", "bob", "carol"):
            served = {(await chat(proc.url, {"tokens": 1}, model="sticky", user=user))[1]["x-sluicegate-deployment"]
                      for _ in range(5)}
            assert len(served) == 1, (user, served)
        weighted = Counter([(await chat(proc.url, {"tokens": 1}, model="weighted"))[1]["x-sluicegate-deployment"]
                            for _ in range(60)])
        assert weighted["w9"] > weighted["w1"] * 2, weighted
        ttft = Counter([(await chat(proc.url, {"tokens": 1}, model="ttft"))[1]["x-sluicegate-deployment"]
                        for _ in range(20)])
        assert ttft["fast"] >= 16, ttft
        rr = Counter([(await chat(proc.url, {"tokens": 1}, model="rr"))[1]["x-sluicegate-deployment"]
                      for _ in range(10)])
        assert rr == Counter({"r1": 5, "r2": 5})
        busy_task = asyncio.create_task(chat(proc.url, {"tokens": 30, "interval": 0.05}, model="lif"))
        await asyncio.sleep(0.3)
        lif = Counter([(await chat(proc.url, {"tokens": 1}, model="lif"))[1]["x-sluicegate-deployment"]
                       for _ in range(6)])
        busy = (await busy_task)[1]["x-sluicegate-deployment"]
        assert lif == Counter({"l1" if busy == "l2" else "l2": 6}), (busy, lif)
    finally:
        proc.stop()


# --- API keys ------------------------------------------------------------------------------------------------------
async def test_api_keys(mock_upstream: Proc) -> None:
    secret_b = "sk-bravo-0123456789"
    proc = start_gateway(
        config(
            {"name": "m", "deployments": [deployment(mock_upstream.url, "d")]},
            {"name": "other", "deployments": [deployment(mock_upstream.url, "d2")]},
            auth={"keys": [
                {"name": "alpha", "key": "${ALPHA_KEY}", "models": ["m"], "rpm": 3},
                {"name": "bravo", "key_sha256": hashlib.sha256(secret_b.encode()).hexdigest(), "max_concurrent": 1},
            ]},
        ),
        env={"ALPHA_KEY": "sk-alpha-0123456789"},
    )
    alpha = {"Authorization": "Bearer sk-alpha-0123456789"}
    bravo = {"Authorization": f"Bearer {secret_b}"}
    try:
        status, _, raw = await chat(proc.url, {"tokens": 1})
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        assert (await chat(proc.url, {"tokens": 1}, headers={"Authorization": "Bearer wrong-key-123"}))[0] == 401
        status, _, raw = await chat(proc.url, {"tokens": 1}, model="other", headers=alpha)
        assert status == 403 and json.loads(raw)["error"]["code"] == "model_not_allowed"
        async with aiohttp.ClientSession() as session, session.get(f"{proc.url}/v1/models", headers=alpha) as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["m"]
        # rpm 3: the 403 above did not count, two more pass, then 429 with Retry-After.
        assert (await chat(proc.url, {"tokens": 1}, headers=alpha))[0] == 200
        assert (await chat(proc.url, {"tokens": 1}, headers=alpha))[0] == 200
        assert (await chat(proc.url, {"tokens": 1}, headers=alpha))[0] == 200
        status, headers, raw = await chat(proc.url, {"tokens": 1}, headers=alpha)
        assert status == 429 and json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
        assert int(headers["Retry-After"]) >= 1
        # bravo: one at a time.
        long = asyncio.create_task(chat(proc.url, {"tokens": 10, "interval": 0.05}, model="other", headers=bravo))
        await asyncio.sleep(0.2)
        status, _, raw = await chat(proc.url, {"tokens": 1}, headers=bravo)
        assert status == 429 and json.loads(raw)["error"]["code"] == "key_at_capacity"
        assert (await long)[0] == 200
        assert metric(proc.url, "sluicegate_concurrency_rejections_total", scope="key", name="bravo") == 1
        # A thread writes the access log in order: once the last request's line is in, every line is.
        def last_line_written() -> bool:
            return any('"key_name":"bravo"' in line and '"model":"other"' in line and '"status":200' in line
                       for line in proc.read_log().splitlines())
        assert await asyncio.to_thread(wait_for, last_line_written, 10.0)
        log = proc.read_log()
        assert "sk-alpha" not in log and secret_b not in log
        metrics_text = (await asyncio.to_thread(lambda: __import__("urllib.request").request.urlopen(
            f"{proc.url}/metrics").read().decode()))
        assert "sk-alpha" not in metrics_text and secret_b not in metrics_text
    finally:
        proc.stop()


async def test_hedging_attacks_the_first_token_tail(mocks: list[Proc]) -> None:
    fast, slow = start_mock(), start_mock("--first-delay", "3")
    mocks += [fast, slow]
    proc = start_gateway(config({
        "name": "m", "hedge_after": "200ms",
        "deployments": [deployment(slow.url, "slow"), deployment(fast.url, "fast")],
    }))
    try:
        for _ in range(2):  # whichever deployment round robin starts on, the fast one wins
            started = time.monotonic()
            status, headers, raw = await chat(proc.url, {"tokens": 3})
            assert status == 200 and raw.rstrip().endswith(b"data: [DONE]")
            assert headers["x-sluicegate-deployment"] == "fast"
            assert time.monotonic() - started < 1.5
        assert metric(proc.url, "sluicegate_retries_total", outcome="hedged") == 1
        # The losing attempt's upstream connection was closed, not left running.
        assert await asyncio.to_thread(wait_for, lambda: get_json(f"{slow.url}/_mock/stats")["active"] == 0, 5.0)
        assert metric(proc.url, "sluicegate_upstream_in_flight") == 0
    finally:
        proc.stop()
