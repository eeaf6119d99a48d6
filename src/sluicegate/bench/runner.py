"""Drives a bench run: optional warm-up, then N measured requests, C at a time, bounded by a hard deadline.

Accounting rules:
- Latency (TTFT, inter-token gaps) comes from requests that succeeded only.
- Throughput counts every content event received in the measured phase, including those of requests that
  later failed or were cut off by the deadline: it is what the client actually received.
- The run stops early, as unreachable, at the first `connect` failure if no request has had any HTTP
  answer yet.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import msgspec

from sluicegate.bench.cpu import process_cpu_seconds
from sluicegate.bench.protocol import Endpoint, build_body, reader_for
from sluicegate.bench.stream import RequestOutcome, RequestSpec, new_client, stream_one
from sluicegate.upstream.client import UpstreamClient


@dataclass(frozen=True)
class BenchConfig:
    url: str  # base URL ending in /v1
    model: str
    endpoint: Endpoint = Endpoint.CHAT
    prompt: str = "Write a long story."
    max_tokens: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    include_usage: bool = True
    api_key: str | None = None
    concurrency: int = 1
    requests: int = 1
    warmup: int = 0
    ramp_s: float = 0.0  # worker i starts its first request at ramp_s * i / concurrency (in each phase)
    timeout_s: float = 120.0
    max_seconds: float = 600.0
    cpu_pids: tuple[int, ...] = ()
    label: str | None = None

    @property
    def request_url(self) -> str:
        return self.url.rstrip("/") + self.endpoint.path


class Phase(StrEnum):
    WARMUP = "warmup"
    MEASURED = "measured"


class ProgressSink(Protocol):
    def phase_started(self, phase: Phase, total: int) -> None: ...

    def request_done(self, phase: Phase, outcome: RequestOutcome) -> None: ...


@dataclass
class Tally:
    """What one phase's requests added up to."""

    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ttfts_s: list[float] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)
    content_events: int = 0
    usage_tokens: int = 0
    usage_reports: int = 0

    def record(self, out: RequestOutcome) -> None:
        self.content_events += out.content_events
        if out.usage_tokens is not None:
            self.usage_tokens += out.usage_tokens
            self.usage_reports += 1
        if out.error is None:
            self.ok += 1
            if out.ttft_s is not None:
                self.ttfts_s.append(out.ttft_s)
            self.gaps_s.extend(out.gaps_s)
        else:
            self.failed += 1
            self.errors[out.error] += 1

    def record_cancelled(self, out: RequestOutcome) -> None:
        self.cancelled += 1
        self.content_events += out.content_events


@dataclass
class BenchResult:
    config: BenchConfig
    measured: Tally
    wall_s: float
    stopped_by_deadline: bool
    unreachable: bool
    cpu_s: dict[int, float | None]  # per --cpu-pid; None if the process vanished or was unreadable
    client_cpu_s: float

    @property
    def not_started(self) -> int:
        m = self.measured
        return self.config.requests - m.ok - m.failed - m.cancelled


class _Unreachable(Exception):
    pass


@dataclass
class _RunState:
    spec: RequestSpec
    deadline: float
    sink: ProgressSink | None
    ramp_s: float = 0.0
    responded_any: bool = False


def request_spec(config: BenchConfig) -> RequestSpec:
    body = build_body(
        config.endpoint,
        config.model,
        config.prompt,
        config.max_tokens,
        config.include_usage,
        config.extra_body,
    )
    # No Accept-Encoding: a compressed event stream would hide the token timing.
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream", "User-Agent": "sluicegate-bench"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    return RequestSpec(
        url=config.request_url,
        body=msgspec.json.encode(body),
        headers=headers,
        timeout_s=config.timeout_s,
        reader=reader_for(config.endpoint),
    )


async def run_bench(config: BenchConfig, sink: ProgressSink | None = None) -> BenchResult:
    loop = asyncio.get_running_loop()
    state = _RunState(request_spec(config), loop.time() + config.max_seconds, sink, config.ramp_s)
    measured = Tally()
    stopped = unreachable = False
    wall = 0.0
    cpu_before: dict[int, float | None] = {}
    client_before = time.process_time()
    client = new_client()
    try:
        if config.warmup > 0:
            stopped = await _run_phase(client, state, Phase.WARMUP, config.warmup, config.concurrency, Tally())
        if not stopped:
            cpu_before = {pid: process_cpu_seconds(pid) for pid in config.cpu_pids}
            client_before = time.process_time()
            started = time.perf_counter()
            try:
                stopped = await _run_phase(client, state, Phase.MEASURED, config.requests, config.concurrency, measured)
            finally:
                wall = time.perf_counter() - started
    except _Unreachable:
        unreachable = True
    finally:
        client.close()
    client_cpu = time.process_time() - client_before
    cpu_s: dict[int, float | None] = {}
    for pid in config.cpu_pids:
        before, after = cpu_before.get(pid), process_cpu_seconds(pid)
        cpu_s[pid] = after - before if before is not None and after is not None else None
    return BenchResult(config, measured, wall, stopped, unreachable, cpu_s, client_cpu)


async def _run_phase(
    client: UpstreamClient, state: _RunState, phase: Phase, total: int, concurrency: int, tally: Tally
) -> bool:
    """Run `total` requests, `concurrency` at a time. True if the deadline cut the phase short."""
    if state.sink is not None:
        state.sink.phase_started(phase, total)
    remaining = total

    async def worker(index: int) -> None:
        nonlocal remaining
        if state.ramp_s:
            await asyncio.sleep(state.ramp_s * index / concurrency)
        while remaining > 0:
            remaining -= 1
            out = RequestOutcome()
            try:
                await stream_one(client, state.spec, out)
            except asyncio.CancelledError:
                tally.record_cancelled(out)
                raise
            tally.record(out)
            if out.responded:
                state.responded_any = True
            elif out.error == "connect" and not state.responded_any:
                raise _Unreachable
            if state.sink is not None:
                state.sink.request_done(phase, out)

    try:
        async with asyncio.timeout_at(state.deadline):
            try:
                async with asyncio.TaskGroup() as group:
                    for index in range(min(concurrency, total)):
                        group.create_task(worker(index))
            except* _Unreachable:
                raise _Unreachable from None
    except TimeoutError:
        return True
    return False
