"""Usage records, the access log and the admin usage API, through a real gateway process: exactly one record per
request whatever ended it, the disconnect flag, the digest of the bytes the client received."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from pathlib import Path

import aiohttp

from tests.support.http import get_json, metric, wait_for
from tests.support.procs import Proc, start_gateway, start_mock


async def test_exactly_one_record_per_request_under_chaos(tmp_path: Path) -> None:
    upstream = start_mock()
    dsn = str(tmp_path / "usage.db")
    proc = start_gateway({
        "models": [{"name": "m", "deployments": [{"provider": "openai", "api_base": f"{upstream.url}/v1",
                                                  "model": "mock-model", "max_concurrent": 6}],
                    "queue_timeout": "300ms", "retry": {"attempts": 1},
                    # A non-streaming request to a stalled upstream waits for `request`: keep it short here.
                    "timeouts": {"first_chunk": "300ms", "idle": "300ms", "request": "2s"}}],
        "usage": {"dsn": dsn, "flush_interval": "100ms"},
    })
    rng = random.Random(3)
    ids: list[str] = []
    disconnected: list[str] = []
    received: dict[str, bytes] = {}

    client_ids: dict[str, str] = {}

    async def one(i: int) -> None:
        # Every client reuses one of a few ids on purpose: the gateway's own id keeps the records apart.
        client_id = f"client-{i % 3}"
        mock = rng.choice([{"tokens": 5}, {"tokens": 5, "reset_after": 2}, {"status": 500}, {"stall_after": 1},
                           {"first_delay": 1}, {"tokens": 30, "interval": 0.01}])
        if i % 6 == 0:
            mock = {"tokens": 200, "interval": 0.01}  # long enough that the client really leaves mid-stream
        payload = {"model": "m", "stream": i % 5 != 0, "mock": mock}
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{proc.url}/v1/chat/completions", json=payload,
                                      headers={"x-request-id": client_id})
            rid = resp.headers["x-request-id"]
            assert resp.headers["x-client-request-id"] == client_id and rid != client_id
            ids.append(rid)
            client_ids[rid] = client_id
            if i % 6 == 0 and resp.status == 200 and payload["stream"]:
                await resp.content.readany()
                resp.close()  # the client goes away mid-stream
                disconnected.append(rid)
                return
            received[rid] = await resp.read()

    try:
        await asyncio.gather(*(one(i) for i in range(120)))

        def all_written() -> bool:
            return all(_record(proc, rid) is not None for rid in ids)
        assert await asyncio.to_thread(wait_for, all_written, 15.0)
        usage = get_json(f"{proc.url}/v1/usage")["data"]
        assert sum(row["requests"] for row in usage) == len(ids) == 120  # exactly one record each, no more
        for rid, client_id in client_ids.items():
            assert (_record(proc, rid) or {}).get("client_request_id") == client_id
        for rid in disconnected:
            record = _record(proc, rid)
            assert record is not None and record["client_disconnected"] is True
            assert record["outcome"] == "client_disconnected"
        outcomes = {(_record(proc, rid) or {}).get("outcome") for rid in ids}
        assert {"completed", "upstream_error", "client_disconnected"} <= outcomes, outcomes
        assert outcomes & {"timeout_idle", "timeout_first_chunk"}, outcomes
        # The digest is of the exact bytes the client got.
        for rid, body in received.items():
            record = _record(proc, rid)
            assert record is not None
            if record["status"] == 200:
                assert record["sha256"] == hashlib.sha256(body).hexdigest()
                assert record["bytes_sent"] == len(body)
        assert metric(proc.url, "sluicegate_usage_records_dropped_total") == 0
        # One access-log line per request, as JSON, never an API key or prompt text.
        def access_lines() -> list[dict[str, object]]:
            return [json.loads(line) for line in proc.read_log().splitlines() if line.startswith('{"request_id"')]
        await asyncio.to_thread(wait_for, lambda: len(access_lines()) >= len(ids), 10.0)  # written by a thread
        assert sorted(str(entry["request_id"]) for entry in access_lines()) == sorted(ids)
    finally:
        proc.stop()
        upstream.stop()


def _record(proc: Proc, rid: str) -> dict[str, object] | None:
    import urllib.error

    try:
        return get_json(f"{proc.url}/v1/requests/{rid}")  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


async def test_usage_api_needs_an_admin_key(mock_upstream: Proc, tmp_path: Path) -> None:
    proc = start_gateway({
        "models": [{"name": "m", "deployments": [{"provider": "openai", "api_base": f"{mock_upstream.url}/v1"}]}],
        "auth": {"keys": [{"name": "user", "key": "sk-user-0123456789"},
                          {"name": "ops", "key": "sk-ops-0123456789", "admin": True}]},
        "usage": {"dsn": str(tmp_path / "u.db"), "flush_interval": "50ms"},
    })
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{proc.url}/v1/chat/completions",
                                    json={"model": "m", "stream": True, "stream_options": {"include_usage": True},
                                          "mock": {"tokens": 4}},
                                    headers={"Authorization": "Bearer sk-user-0123456789"}) as resp:
                rid = resp.headers["x-request-id"]
                await resp.read()
            async with session.get(f"{proc.url}/v1/usage",
                                   headers={"Authorization": "Bearer sk-user-0123456789"}) as resp:
                assert resp.status == 403
            async with session.get(f"{proc.url}/v1/usage") as resp:
                assert resp.status == 401
            ops = {"Authorization": "Bearer sk-ops-0123456789"}

            async def record() -> dict[str, object] | None:
                async with session.get(f"{proc.url}/v1/requests/{rid}", headers=ops) as resp:
                    return await resp.json() if resp.status == 200 else None
            found = None
            for _ in range(100):
                found = await record()
                if found:
                    break
                await asyncio.sleep(0.05)
            assert found is not None
            assert found["key_name"] == "user" and found["completion_tokens"] == 4 and found["model"] == "m"
            async with session.get(f"{proc.url}/v1/usage?model=m&key=user", headers=ops) as resp:
                rows = (await resp.json())["data"]
            assert rows[0]["requests"] == 1 and rows[0]["completion_tokens"] == 4
            async with session.get(f"{proc.url}/v1/usage?since=yesterday", headers=ops) as resp:
                assert resp.status == 400
    finally:
        proc.stop()


async def test_requests_refused_before_routing_get_one_record_and_one_access_line(mock_upstream: Proc,
                                                                                   tmp_path: Path) -> None:
    """401, 400, 403, 404 and 413 end a request too: each gets its usage record and access-log line (with what
    was known: the key, the model asked for) and one sluicegate_requests_total increment, under model "(unknown)"."""
    proc = start_gateway({
        "server": {"max_body_bytes": 2048},
        "models": [{"name": "m", "deployments": [{"provider": "openai", "api_base": f"{mock_upstream.url}/v1"}]},
                   {"name": "other", "deployments": [{"provider": "openai", "api_base": f"{mock_upstream.url}/v1"}]}],
        "auth": {"keys": [{"name": "user", "key": "sk-user-0123456789", "models": ["m", "nope*"]},
                          {"name": "ops", "key": "sk-ops-0123456789", "admin": True}]},
        "usage": {"dsn": str(tmp_path / "u.db"), "flush_interval": "50ms"},
    })
    user = {"Authorization": "Bearer sk-user-0123456789"}
    ops = {"Authorization": "Bearer sk-ops-0123456789"}
    cases = [  # headers, body, expected status, outcome, key, model recorded, stream recorded (once parsed)
        ({}, b'{"model": "m", "stream": true}', 401, "rejected", None, "(unknown)", False),
        (user, b'{"model": "m", "stream": tru', 400, "invalid", "user", "(unknown)", False),
        (user, b'{"model": "other", "stream": true}', 403, "rejected", "user", "other", True),
        (user, b'{"model": "nope-' + b"x" * 400 + b'", "stream": true}', 404, "invalid", "user", "nope-" + "x" * 251,
         True),
        (user, b'{"model": "m", "stream": true, "pad": "' + b"x" * 3000 + b'"}', 413, "invalid", "user", "(unknown)",
         False),
    ]
    try:
        before = {status: metric(proc.url, "sluicegate_requests_total", model="(unknown)", status=str(status))
                  for _, _, status, *_ in cases}
        ids = []
        async with aiohttp.ClientSession() as session:
            for headers, payload, status, *_ in cases:
                async with session.post(f"{proc.url}/v1/chat/completions", data=payload,
                                        headers={**headers, "Content-Type": "application/json",
                                                 "x-client-request-id": f"case-{status}"}) as resp:
                    assert resp.status == status, await resp.text()
                    ids.append(resp.headers["x-request-id"])

            async def record(rid: str) -> dict[str, object] | None:
                async with session.get(f"{proc.url}/v1/requests/{rid}", headers=ops) as resp:
                    return await resp.json() if resp.status == 200 else None  # type: ignore[no-any-return]

            records: list[dict[str, object] | None] = [None] * len(ids)
            for _ in range(100):
                records = [await record(rid) for rid in ids]
                if all(records):
                    break
                await asyncio.sleep(0.05)
        for (_, _, status, outcome, key, model, stream), found in zip(cases, records, strict=True):
            assert found is not None, status
            assert (found["status"], found["outcome"], found["key_name"], found["model"], found["stream"]) == (
                status, outcome, key, model, stream)
            assert found["client_request_id"] == f"case-{status}"
            assert found["deployment"] is None and found["attempts"] == 0 and found["bytes_sent"] == 0
        for status, count in before.items():
            assert metric(proc.url, "sluicegate_requests_total", model="(unknown)", status=str(status)) == count + 1
        assert metric(proc.url, "sluicegate_streams_total") == 0  # refused requests are no model's streams
        assert metric(proc.url, "sluicegate_streams_in_flight") == 0

        def access_lines() -> list[dict[str, object]]:
            return [json.loads(line) for line in proc.read_log().splitlines() if line.startswith('{"request_id"')]
        assert await asyncio.to_thread(wait_for, lambda: len(access_lines()) >= len(ids), 10.0)
        assert sorted(str(entry["request_id"]) for entry in access_lines()) == sorted(ids)
        assert "sk-user" not in proc.read_log()
    finally:
        proc.stop()


async def test_dashboard_is_served_and_its_feed_moves(mock_upstream: Proc) -> None:
    proc = start_gateway({"models": [{"name": "m", "deployments": [
        {"provider": "openai", "api_base": f"{mock_upstream.url}/v1"}]}]})
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{proc.url}/dashboard") as resp:
                assert resp.status == 200 and "<html" in (await resp.text()).lower()
            async with session.get(f"{proc.url}/dashboard/events") as feed:
                first = json.loads((await feed.content.readuntil(b"\n\n")).decode().split("data: ", 1)[1])
                for _ in range(5):
                    async with session.post(f"{proc.url}/v1/chat/completions",
                                            json={"model": "m", "stream": True, "mock": {"tokens": 3}}) as resp:
                        await resp.read()
                later = first
                for _ in range(4):
                    later = json.loads((await feed.content.readuntil(b"\n\n")).decode().split("data: ", 1)[1])
        assert json.dumps(later) != json.dumps(first)
        assert "m" in json.dumps(later)
    finally:
        proc.stop()
