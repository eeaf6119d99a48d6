"""Bedrock's AWS credential lookup never runs on the event loop: a slow or failing credential endpoint (here the
container credentials endpoint botocore asks, AWS_CONTAINER_CREDENTIALS_FULL_URI on 127.0.0.1) must not stall the
worker's other requests, is asked once for every request waiting on it, and a failure is a clear 500 that is not
looked up again by every request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.support.http import metric, mock_request, wait_for
from tests.support.procs import Proc, start_gateway, start_mock
from tests.support.threaded_app import ThreadedApp

IN_FLIGHT = ("sluicegate_streams_in_flight", "sluicegate_upstream_in_flight")
LOOKUP_DELAY = 1.6  # below botocore's 2 s timeout for the container endpoint


class CredentialsEndpoint:
    """The container credentials endpoint, in a thread: answers after `delay` with temporary credentials, or with
    `status` when that is not 200."""

    def __init__(self, delay: float, status: int = 200) -> None:
        self.delay = delay
        self.status = status
        self.hits = 0
        app = web.Application()
        app.router.add_get("/creds", self._answer)
        self._app = ThreadedApp(app)
        self.url = f"http://127.0.0.1:{self._app.port}/creds"

    async def _answer(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="credentials service unavailable")
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return web.json_response({"AccessKeyId": "ASIACONTAINERKEY", "SecretAccessKey": "container-secret",
                                  "Token": "container-token", "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})

    def close(self) -> None:
        self._app.close()


@pytest.fixture(scope="module")
def bedrock_mock() -> Iterator[Proc]:
    proc = start_mock("--format", "bedrock")
    yield proc
    proc.stop()


def gateway_with(endpoint: CredentialsEndpoint, bedrock_mock: Proc) -> Proc:
    deployment = {"provider": "bedrock", "api_base": bedrock_mock.url, "model": "up-model", "region": "us-east-1",
                  "forward_fields": ["mock"]}
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.url, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_EC2_METADATA_DISABLED": "true"}
    return start_gateway({"models": [{"name": "claude", "deployments": [deployment], "retry": {"attempts": 1}}]},
                         env)


def stream_text(gateway: Proc, tag: str) -> str:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=20)
    chunks = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, extra_body={"mock": {"tokens": 5, "tag": tag}})
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def healthz_latencies(gateway: Proc, seconds: float) -> list[float]:
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        with urllib.request.urlopen(f"{gateway.url}/healthz", timeout=10) as resp:
            assert resp.status == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    return latencies


def test_a_slow_lookup_stalls_nothing_and_runs_once(bedrock_mock: Proc) -> None:
    endpoint = CredentialsEndpoint(LOOKUP_DELAY)
    gateway = gateway_with(endpoint, bedrock_mock)
    try:
        tags = [uuid.uuid4().hex for _ in range(3)]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            streams = [pool.submit(stream_text, gateway, tag) for tag in tags]
            time.sleep(0.2)  # the lookup has started
            latencies = healthz_latencies(gateway, LOOKUP_DELAY - 0.4)
            texts = [s.result(timeout=30) for s in streams]
        # On the event loop the lookup would hold /healthz for the whole LOOKUP_DELAY.
        assert max(latencies) < LOOKUP_DELAY / 2, latencies
        assert all(texts) and len(set(texts)) == 1
        assert endpoint.hits == 1  # one lookup for the three requests that waited on it
        seen: Any = mock_request(bedrock_mock.url, tags[0])
        assert seen["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=ASIACONTAINERKEY/")
        assert seen["headers"]["x-amz-security-token"] == "container-token"
        assert stream_text(gateway, uuid.uuid4().hex) == texts[0] and endpoint.hits == 1  # signed from the copy
        assert wait_for(lambda: all(metric(gateway.url, gauge) == 0 for gauge in IN_FLIGHT), 5.0)
    finally:
        gateway.stop()
        endpoint.close()


def test_a_failed_lookup_is_a_clear_500_and_is_not_repeated_by_every_request(bedrock_mock: Proc) -> None:
    endpoint = CredentialsEndpoint(0.0, status=500)
    gateway = gateway_with(endpoint, bedrock_mock)
    try:
        with pytest.raises(openai.InternalServerError) as info:
            stream_text(gateway, uuid.uuid4().hex)
        assert "Could not load AWS credentials for provider bedrock" in info.value.message
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "provider_config_error"
        hits = endpoint.hits
        assert hits >= 1
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            stream_text(gateway, uuid.uuid4().hex)
        assert time.monotonic() - started < 1.0  # answered from the remembered failure (botocore retries take 2 s)
        assert info.value.status_code == 500 and "Could not load AWS credentials" in info.value.message
        assert endpoint.hits == hits
        assert all(metric(gateway.url, gauge) == 0 for gauge in IN_FLIGHT)  # nothing held by the failures
    finally:
        gateway.stop()
        endpoint.close()


def test_the_signing_copy_is_renewed_in_the_background() -> None:
    """The cadence, with a hand-driven clock: a request never waits once a copy exists; the chain is asked again
    every CHECK_EVERY seconds, and after a failure not before RETRY_AFTER."""
    from sluicegate.providers import aws_sigv4
    from sluicegate.types import GatewayError

    now = [1000.0]
    answers: list[object] = ["first", "second", GatewayError(500, "endpoint down"), "third"]
    asked: list[object] = []

    def from_chain() -> object:
        answer = answers[len(asked)]
        asked.append(answer)
        if isinstance(answer, GatewayError):
            raise answer
        return answer

    async def scenario() -> None:
        signer = aws_sigv4.SigV4Signer(clock=lambda: now[0])
        signer._frozen_from_chain = from_chain  # type: ignore[method-assign]
        await signer.ready()
        await signer.ready()
        assert asked == ["first"] and signer._frozen == "first"
        now[0] += aws_sigv4.CHECK_EVERY
        await signer.ready()  # returns at once; the renewal runs in a thread
        assert signer._frozen == "first"
        await asyncio.sleep(0.2)
        assert signer._frozen == "second"
        now[0] += aws_sigv4.CHECK_EVERY
        await signer.ready()
        await asyncio.sleep(0.2)
        assert len(asked) == 3 and signer._frozen == "second"  # a failed renewal keeps the copy that still signs
        now[0] += aws_sigv4.RETRY_AFTER / 2
        await signer.ready()
        await asyncio.sleep(0.2)
        assert len(asked) == 3  # not asked again so soon
        now[0] += aws_sigv4.RETRY_AFTER
        await signer.ready()
        await asyncio.sleep(0.2)
        assert signer._frozen == "third"

    asyncio.run(scenario())
