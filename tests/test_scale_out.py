"""Scale-out: gateway instances sharing caps, budgets and limits through a real Redis; several workers on one port
(gunicorn); draining on SIGTERM; config reload on SIGHUP. Real processes and sockets only.

Redis: SLUICEGATE_TEST_REDIS_URL, or a private redis-server started on a free port (tests/support/redis_server.py);
each test isolates its keys with its own key prefix. The test that stops Redis always uses a private server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import yaml
from aiohttp import web

from sluicegate.server.app import healthz
from sluicegate.server.draining import END_WAIT, DrainingAppRunner, ShutdownCoordinator, cancelled_for_shutdown
from tests.support import redis_server
from tests.support.http import get_json, metric, mock_request, wait_for
from tests.support.procs import Proc, start_gateway, start_mock


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server.redis_url() as url:
        yield url


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts; all are stopped at the end, whatever happened."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop(timeout=5)


def unique_prefix() -> str:
    return f"sgscale:{uuid.uuid4().hex[:10]}:"


def model(upstream: Proc, name: str = "dep", **settings: Any) -> dict[str, Any]:
    deployment = {"provider": "openai", "api_base": f"{upstream.url}/v1", "model": "mock-model", "name": name,
                  **settings.pop("deployment", {})}
    return {"name": "m", "deployments": [deployment], **settings}


def redis_state(url: str, prefix: str, **settings: Any) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": url, "key_prefix": prefix, **settings}


async def start_gateways(procs: list[Proc], *configs: dict[str, Any], extra: tuple[str, ...] = ()) -> list[Proc]:
    """Start gateways in parallel (each start waits for its ready line)."""
    started = await asyncio.gather(*(asyncio.to_thread(start_gateway, c, None, *extra) for c in configs),
                                   return_exceptions=True)
    procs += [p for p in started if isinstance(p, Proc)]
    for result in started:
        if isinstance(result, BaseException):
            raise result
    return [p for p in started if isinstance(p, Proc)]


def mock_stats(upstream: Proc) -> dict[str, Any]:
    stats: dict[str, Any] = get_json(f"{upstream.url}/_mock/stats")
    return stats


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, seconds: float) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.seconds = seconds

    @property
    def completed(self) -> bool:
        return self.status == 200 and self.body.rstrip().endswith(b"data: [DONE]")

    @property
    def error_code(self) -> str | None:
        code: str | None = json.loads(self.body)["error"]["code"]
        return code


async def chat(url: str, mock: dict[str, Any] | None = None, *, stream: bool = True,
               request_id: str | None = None) -> Answer:
    """One request; for a stream, whatever body arrived (a cut-off stream is returned, not raised)."""
    payload: dict[str, Any] = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "x"}],
                               "mock": mock or {"tokens": 2}}
    headers = {"x-request-id": request_id} if request_id else {}
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.post(
        f"{url}/v1/chat/completions", json=payload, headers=headers
    ) as resp:
        body = b""
        try:
            async for chunk in resp.content.iter_any():
                body += chunk
        except aiohttp.ClientPayloadError:
            pass
        return Answer(resp.status, dict(resp.headers), body, time.monotonic() - started)


async def until(predicate: Any, seconds: float, what: str) -> None:
    assert await asyncio.to_thread(wait_for, predicate, seconds), f"timed out after {seconds}s waiting for {what}"


def usage_rows(db: Path, where: str = "1", args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(f"SELECT * FROM usage_records WHERE {where}", args).fetchall()


def config_path(proc: Proc) -> Path:
    args = list(proc.popen.args)  # type: ignore[arg-type]
    return Path(args[args.index("--config") + 1])


def rewrite_config(proc: Proc, config: dict[str, Any]) -> None:
    path = config_path(proc)
    current = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**current, **config}))


def remaining_stdout(proc: Proc) -> str:
    assert proc.popen.stdout is not None and proc.popen.poll() is not None
    return proc.popen.stdout.read()


# --- several instances, one Redis -------------------------------------------------------------------------------
@pytest.mark.parametrize("caps", [(10,), (6, 4)], ids=["one-deployment", "two-deployments"])
async def test_three_instances_share_one_deployment_cap(redis_url: str, procs: list[Proc],
                                                        caps: tuple[int, ...]) -> None:
    """100 clients over three instances, deployments capped at 10 in all cluster-wide (one deployment, or two that a
    request queues for at once): no upstream ever sees more than its cap at once, and every request either streams
    to the end or gets 429 once its queue_timeout has passed."""
    upstreams = [start_mock("--tokens", "8", "--interval", "0.05") for _ in caps]
    procs.extend(upstreams)
    deployments = [{"provider": "openai", "api_base": f"{upstream.url}/v1", "model": "mock-model",
                    "name": f"dep-{i}", "max_concurrent": cap}
                   for i, (upstream, cap) in enumerate(zip(upstreams, caps, strict=True))]
    config = {"models": [{"name": "m", "deployments": deployments, "queue_timeout": "1s"}],
              "state": redis_state(redis_url, unique_prefix())}
    gateways = await start_gateways(procs, config, config, config)

    answers = await asyncio.gather(*(chat(gateways[i % 3].url, {"tokens": 8, "interval": 0.05})
                                     for i in range(100)))
    all_stats = [mock_stats(upstream) for upstream in upstreams]
    for stats, cap in zip(all_stats, caps, strict=True):
        if stats["high_water"] > cap:  # say why: a degraded (fail_open) state backend would explain it, a bug not
            logs = "\n".join(f"--- {g.url}\n{g.read_log()[-3000:]}" for g in gateways)
            pytest.fail(f"the cap was exceeded: {stats}\n{logs}")
        assert cap - 2 <= stats["high_water"] <= cap, stats
    statuses = Counter(a.status for a in answers)
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] > 10, statuses  # released slots were handed on, across instances, to queued requests
    for answer in answers:
        if answer.status == 200:
            assert answer.completed, answer.body[-200:]
        else:
            assert answer.error_code == "deployment_at_capacity"
            assert answer.seconds >= 0.9, answer.seconds  # refused only after waiting queue_timeout
    assert sum(stats["requests"] for stats in all_stats) == statuses[200]


async def test_killed_instance_loses_its_slots_after_lease_ttl(redis_url: str, procs: list[Proc]) -> None:
    """kill -9 an instance holding all 10 slots: another instance's queued requests get them once the leases
    expire (lease_ttl 2 s), not before, and not later than lease_ttl + 2 s."""
    upstream = start_mock()
    procs.append(upstream)
    config = {"models": [model(upstream, deployment={"max_concurrent": 10}, queue_timeout="8s")],
              "state": redis_state(redis_url, unique_prefix(), lease_ttl="2s", redis_timeout="500ms")}
    doomed, survivor = await start_gateways(procs, config, config)
    holders = [asyncio.create_task(chat(doomed.url, {"tokens": 400, "interval": 0.05})) for _ in range(10)]
    try:
        await until(lambda: mock_stats(upstream)["active"] == 10, 10, "10 streams through the doomed instance")
        os.kill(doomed.pid, signal.SIGKILL)
        answers = await asyncio.gather(*(chat(survivor.url, {"tokens": 2}) for _ in range(10)))
        waited = [a.seconds for a in answers]  # each was sent right after the kill
        assert all(a.completed for a in answers), [a.status for a in answers]
        assert min(waited) >= 0.5, waited  # the dead instance's leases held the slots until they expired
        assert max(waited) <= 2.0 + 2.0, waited
    finally:
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)


async def test_retry_budget_is_shared_by_the_fleet(redis_url: str, procs: list[Proc]) -> None:
    """Every upstream answers 503. With ratio 0 the budget is only its floor (5 retries/s plus one second of it at
    the start); three instances share that one floor, so retries stay near 5 + 5 x seconds, not three times it."""
    down = [start_mock("--defaults", '{"status": 503}') for _ in range(2)]
    procs += down
    config = {"models": [{
        "name": "m",
        "deployments": [{"provider": "openai", "api_base": f"{d.url}/v1", "model": "x", "name": f"d{i}"}
                        for i, d in enumerate(down)],
        "retry": {"attempts": 3, "backoff_initial": "1ms", "backoff_max": "5ms"},
        "retry_budget": {"ratio": 0, "min_per_second": 5}, "allowed_fails": 1000,
    }], "state": redis_state(redis_url, unique_prefix())}
    gateways = await start_gateways(procs, config, config, config)

    requests = 0
    started = time.monotonic()
    for _ in range(8):
        answers = await asyncio.gather(*(chat(gateways[i % 3].url, stream=False) for i in range(30)))
        assert all(a.status == 503 for a in answers)
        requests += len(answers)
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    attempts = sum(mock_stats(d)["requests"] for d in down)
    retries = attempts - requests
    assert retries > 0
    assert retries <= 5 + 5 * elapsed + 2, (retries, elapsed)  # one budget; three would allow ~3x this
    assert sum(metric(g.url, "sluicegate_retries_total", outcome="budget_exhausted") for g in gateways) > 0


async def test_redis_outage_follows_on_unavailable_and_shared_limits_resume(procs: list[Proc]) -> None:
    """Cap 4 shared by A (fail_open, expected_instances 2) and B (fail_closed). Redis stops while A streams 4:
    those streams finish; B answers 503; A falls back to its share of 2. Redis restarts: both return to shared
    state by themselves (metric and one log line each way) and the cap is cluster-wide again."""
    with redis_server.private_redis_server() as redis:
        upstream = start_mock()
        procs.append(upstream)
        prefix = unique_prefix()
        shared = {"models": [model(upstream, deployment={"max_concurrent": 4}, queue_timeout=0)]}
        a, b = await start_gateways(
            procs,
            {**shared, "state": redis_state(redis.url, prefix, on_unavailable="fail_open", expected_instances=2)},
            {**shared, "state": redis_state(redis.url, prefix, on_unavailable="fail_closed")},
        )
        long = {"tokens": 30, "interval": 0.05}

        async def fill_a() -> list[asyncio.Task[Answer]]:
            tasks = [asyncio.create_task(chat(a.url, long)) for _ in range(4)]
            await until(lambda: mock_stats(upstream)["active"] == 4, 10, "4 streams through A")
            return tasks

        # Shared: A holds all 4 slots, so B is refused.
        streams = await fill_a()
        assert (await chat(b.url)).error_code == "deployment_at_capacity"

        # Redis goes away mid-stream.
        redis.stop()
        refused = await chat(b.url)
        assert refused.status == 503 and refused.error_code == "state_unavailable"
        assert (await chat(a.url)).error_code == "deployment_at_capacity"  # its 4 live leases exceed its share of 2
        assert all(s.completed for s in await asyncio.gather(*streams))  # nothing in flight was dropped
        await until(lambda: metric(a.url, "sluicegate_streams_in_flight") == 0, 5, "A's streams to end")
        burst = await asyncio.gather(*(chat(a.url, {"tokens": 10, "interval": 0.05}) for _ in range(3)))
        assert sorted(x.status for x in burst) == [200, 200, 429]  # fail_open: cap 4 / 2 instances
        for gateway in (a, b):
            assert metric(gateway.url, "sluicegate_state_available") == 0
            await until(lambda g=gateway: "shared state unavailable" in g.read_log(), 5, "the log line")
            assert gateway.read_log().count("shared state unavailable") == 1

        # Redis is back (empty): both instances return to shared state on their own.
        redis.start()
        for gateway in (a, b):
            await until(lambda g=gateway: metric(g.url, "sluicegate_state_available") == 1, 10, "state available")
        streams = await fill_a()  # more than A's fallback share: the cap is shared again
        assert (await chat(b.url)).error_code == "deployment_at_capacity"
        assert all(s.completed for s in await asyncio.gather(*streams))
        for gateway in (a, b):
            await until(lambda g=gateway: "shared state available again" in g.read_log(), 5, "the log line")
            assert gateway.read_log().count("shared state available again") == 1


# --- several workers on one port --------------------------------------------------------------------------------
def upstream_connections(worker: psutil.Process, upstream: Proc) -> int:
    port = int(upstream.url.rsplit(":", 1)[1])
    return sum(1 for c in worker.net_connections(kind="tcp") if c.raddr and c.raddr.port == port)


async def test_two_workers_share_caps_metrics_and_usage_store(redis_url: str, procs: list[Proc],
                                                              tmp_path: Path) -> None:
    """--workers 2 with Redis state: the deployment cap holds across both workers, /metrics (served by either
    worker) reports the sum over both, usage records of both land in one store, the ready line is printed once;
    a worker killed mid-stream is replaced and its streams stop counting as in flight."""
    upstream = start_mock()
    procs.append(upstream)
    usage_db = tmp_path / "usage.db"
    config = {"models": [model(upstream, deployment={"max_concurrent": 3}, queue_timeout="8s")],
              "state": redis_state(redis_url, unique_prefix()),
              "usage": {"dsn": str(usage_db), "flush_interval": "100ms"}}
    (gateway,) = await start_gateways(procs, config, extra=("--workers", "2"))
    master = psutil.Process(gateway.pid)
    await until(lambda: len(master.children()) == 2, 10, "both workers")  # ready = the first one serves
    workers = master.children()

    sent = 0
    for _ in range(5):  # the kernel picks the worker for each connection: go on until both have served
        answers = await asyncio.gather(*(chat(gateway.url, {"tokens": 5, "interval": 0.04}) for _ in range(18)))
        assert all(a.completed for a in answers), Counter(a.status for a in answers)
        sent += len(answers)
        if all(upstream_connections(w, upstream) for w in workers):
            break
    assert all(upstream_connections(w, upstream) for w in workers), "one worker served every request"
    stats = mock_stats(upstream)
    if stats["high_water"] != 3:  # say why: a degraded (fail_open) state backend would explain it, a bug would not
        pytest.fail(f"the cap of 3 was not what the upstream saw: {stats}\n{gateway.read_log()[-6000:]}")

    for _ in range(4):  # each scrape is answered by whichever worker accepted it; every one sees both
        assert metric(gateway.url, "sluicegate_requests_total", status="200") == sent
        assert metric(gateway.url, "sluicegate_streams_total", outcome="completed") == sent
        assert metric(gateway.url, "sluicegate_time_to_first_token_seconds_count") == sent
        assert metric(gateway.url, "sluicegate_inter_token_latency_seconds_count") >= sent * 4
        assert metric(gateway.url, "sluicegate_streams_in_flight") == 0
        assert metric(gateway.url, "sluicegate_state_available") == 1
    await until(lambda: len(usage_rows(usage_db)) == sent, 5, "every usage record in the one store")

    # Handler cancellation is on in the workers: a client that leaves while the upstream is still silent gets its
    # upstream request closed at once, not when the first event would have come (5 s).
    async with aiohttp.ClientSession() as session:
        leaving = asyncio.create_task(session.post(f"{gateway.url}/v1/chat/completions", json={
            "model": "m", "stream": True, "messages": [], "mock": {"first_delay": 5, "tag": "leaves"}}))
        await until(lambda: mock_request(upstream.url, "leaves"), 10, "the upstream request")
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
    await until(lambda: (mock_request(upstream.url, "leaves") or {}).get("peer_closed_at"), 2, "the upstream close")

    # kill -9 the worker serving two streams: it is replaced; its streams no longer count as in flight.
    streams = [asyncio.create_task(chat(gateway.url, {"tokens": 60, "interval": 0.05})) for _ in range(2)]
    await until(lambda: metric(gateway.url, "sluicegate_streams_in_flight") == 2, 10, "2 streams in flight")
    gateway_port = int(gateway.url.rsplit(":", 1)[1])
    serving = [w for w in workers
               if any(c.laddr.port == gateway_port and c.status == psutil.CONN_ESTABLISHED
                      for c in w.net_connections(kind="tcp"))]
    victim = serving[0]
    before = metric(gateway.url, "sluicegate_requests_total")
    victim.kill()
    await until(lambda: len(master.children()) == 2 and victim.pid not in [c.pid for c in master.children()], 10,
                "a replacement worker")
    await asyncio.wait_for(asyncio.gather(*streams, return_exceptions=True), 30)  # cut or finished
    await until(lambda: metric(gateway.url, "sluicegate_streams_in_flight") == 0, 10, "no stream in flight")
    assert metric(gateway.url, "sluicegate_requests_total") >= before  # the dead worker's counts stay in the sums

    assert gateway.stop() == 0
    assert "listening on" not in remaining_stdout(gateway)  # printed once, before Proc returned


# --- SIGTERM: drain ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_streams_in_flight(procs: list[Proc], tmp_path: Path, workers: int) -> None:
    """SIGTERM: new connections are refused, /healthz on an open connection answers 503 draining, the stream in
    flight finishes normally, its usage record is written, and the process exits 0."""
    upstream = start_mock()
    procs.append(upstream)
    usage_db = tmp_path / "usage.db"
    (gateway,) = await start_gateways(
        procs,
        {"models": [model(upstream)], "server": {"shutdown_grace": "10s"}, "usage": {"dsn": str(usage_db)}},
        extra=("--workers", str(workers)),
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as probe:
        async with probe.get(f"{gateway.url}/healthz") as resp:  # leaves one keep-alive connection open
            assert resp.status == 200
        stream = asyncio.create_task(chat(gateway.url, {"tokens": 15, "interval": 0.1}, request_id="drained"))
        await until(lambda: mock_stats(upstream)["active"] == 1, 10, "the stream to start")
        gateway.signal(signal.SIGTERM)
        signalled = time.monotonic()

        async def refused() -> bool:
            try:
                async with aiohttp.ClientSession() as fresh, fresh.get(f"{gateway.url}/healthz"):
                    return False
            except aiohttp.ClientConnectorError:
                return True

        while not await refused():
            assert time.monotonic() - signalled < 5, "still accepting connections after SIGTERM"
            await asyncio.sleep(0.05)
        if workers == 1:  # (with two workers the open connection may belong to the worker that has nothing to wait for)
            async with probe.get(f"{gateway.url}/healthz") as resp:
                assert resp.status == 503 and await resp.json() == {"status": "draining"}
                assert resp.headers["Connection"] == "close"
        answer = await stream
    assert answer.completed
    assert await asyncio.to_thread(gateway.popen.wait, 10) == 0
    assert time.monotonic() - signalled < 5
    [row] = usage_rows(usage_db, "client_request_id = ?", ("drained",))
    assert row["outcome"] == "completed"


async def test_grace_over_ends_the_stream_and_keeps_its_usage_record(procs: list[Proc], tmp_path: Path) -> None:
    """A stream longer than shutdown_grace is ended when the grace period is over; the process exits 0 and the
    request's usage record is written."""
    upstream = start_mock()
    procs.append(upstream)
    usage_db = tmp_path / "usage.db"
    (gateway,) = await start_gateways(
        procs, {"models": [model(upstream)], "server": {"shutdown_grace": "1s"}, "usage": {"dsn": str(usage_db)}})
    stream = asyncio.create_task(chat(gateway.url, {"tokens": 400, "interval": 0.05}, request_id="cut"))
    await until(lambda: mock_stats(upstream)["active"] == 1, 10, "the stream to start")
    gateway.signal(signal.SIGTERM)
    signalled = time.monotonic()
    answer = await asyncio.wait_for(stream, 10)
    assert 0.8 <= time.monotonic() - signalled <= 1.0 + 3.0
    assert answer.status == 200 and not answer.completed
    assert await asyncio.to_thread(gateway.popen.wait, END_WAIT + 5) == 0
    assert len(usage_rows(usage_db, "client_request_id = ?", ("cut",))) == 1
    await until(lambda: mock_stats(upstream)["active"] == 0, 5, "the upstream stream to be closed")


async def test_grace_over_ends_the_stream_with_a_shutdown_error_event(procs: list[Proc], tmp_path: Path) -> None:
    upstream = start_mock()
    procs.append(upstream)
    usage_db = tmp_path / "usage.db"
    (gateway,) = await start_gateways(
        procs, {"models": [model(upstream)], "server": {"shutdown_grace": "1s"}, "usage": {"dsn": str(usage_db)}})
    stream = asyncio.create_task(chat(gateway.url, {"tokens": 400, "interval": 0.05}, request_id="cut-event"))
    await until(lambda: mock_stats(upstream)["active"] == 1, 10, "the stream to start")
    gateway.signal(signal.SIGTERM)
    answer = await asyncio.wait_for(stream, 10)
    last = answer.body.rstrip().rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"data: ") and json.loads(last[6:])["error"]["code"] == "shutdown", last
    assert await asyncio.to_thread(gateway.popen.wait, END_WAIT + 5) == 0
    [row] = usage_rows(usage_db, "client_request_id = ?", ("cut-event",))
    assert row["outcome"] == "shutdown" and not row["client_disconnected"]


async def test_drain_marks_only_what_it_cancels() -> None:
    """The coordinator's contract, without a gateway: after the grace period it cancels the handler marked
    `cancelled_for_shutdown`, and the handler can still write its last event; a client that disconnects cancels
    its handler unmarked."""
    seen: list[bool] = []

    async def ticker(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"data: tick\n\n")
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            seen.append(cancelled_for_shutdown(task))
            if not cancelled_for_shutdown(task):
                raise
            assert task is not None
            task.uncancel()
            await response.write(b"data: shutdown\n\n")
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_get("/ticks", ticker)
    app.router.add_get("/healthz", healthz)
    coordinator = ShutdownCoordinator(grace=0.3)
    coordinator.install(app)
    runner = DrainingAppRunner(app, coordinator, handler_cancellation=True, shutdown_timeout=END_WAIT)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/ticks") as resp:  # a client that leaves
                await resp.content.readline()
            await until(lambda: seen == [False], 5, "the disconnected handler")
            async with session.get(f"{url}/healthz") as resp:
                assert resp.status == 200
            async with session.get(f"{url}/ticks") as resp:
                await resp.content.readline()
                cleanup = asyncio.create_task(runner.cleanup())
                started = time.monotonic()
                body = await resp.read()
                assert 0.25 <= time.monotonic() - started <= 2.0
                assert body.endswith(b"data: shutdown\n\n")
            assert coordinator.draining
        await asyncio.wait_for(cleanup, 10)
        assert seen == [False, True]
    finally:
        await runner.cleanup()


# --- SIGHUP: reload ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reloads_without_dropping_streams(procs: list[Proc], workers: int) -> None:
    """SIGHUP with a new config: the stream in flight finishes on the old config, new requests use the new one.
    SIGHUP with an invalid config: the usual message on stderr, one line per problem; the running config stays."""
    upstream = start_mock()
    procs.append(upstream)
    (gateway,) = await start_gateways(procs, {"models": [model(upstream, name="v1")]},
                                      extra=("--workers", str(workers)))
    stream = asyncio.create_task(chat(gateway.url, {"tokens": 20, "interval": 0.1}))
    await until(lambda: mock_stats(upstream)["active"] == 1, 10, "the stream to start")

    rewrite_config(gateway, {"models": [model(upstream, name="v2")]})
    gateway.signal(signal.SIGHUP)
    deadline = time.monotonic() + 8
    while (await chat(gateway.url)).headers.get("x-sluicegate-deployment") != "v2":
        assert time.monotonic() < deadline, "the new config was not used"
        await asyncio.sleep(0.05)
    answer = await stream
    assert answer.completed and answer.headers["x-sluicegate-deployment"] == "v1"

    rewrite_config(gateway, {"models": [model(upstream, name="v3", deployment={"max_concurrent": -1},
                                              queue_timeout="soon")]})
    gateway.signal(signal.SIGHUP)
    await until(lambda: "is invalid:" in gateway.read_log(), 10, "the refusal")
    log = gateway.read_log()
    assert "models[0].deployments[0].max_concurrent: -1 is not allowed" in log
    assert "models[0].queue_timeout: 'soon' is not allowed" in log
    for _ in range(3):
        answer = await chat(gateway.url)
        assert answer.completed and answer.headers["x-sluicegate-deployment"] == "v2"
    assert gateway.popen.poll() is None
