"""One streamed request: send, read events as they arrive, time them, classify how it ended.

Error kinds (the `error` of an outcome; None means the request succeeded):
  http_<status>  the answer was not 200
  connect        the connection could not be made
  timeout        the whole request took longer than its timeout
  stream_error   an error event arrived mid-stream
  incomplete     the body ended cleanly but without the end-of-stream event
  reset          the connection broke (before the answer or mid-stream)
  bad_event      an event's data was not valid JSON
  client_error   any other aiohttp client failure
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from time import perf_counter

import aiohttp

from sluicegate.bench.protocol import CONTENT, END, ERROR, EventReader
from sluicegate.bench.sse import SSEParser


@dataclass(slots=True)
class RequestOutcome:
    """Filled in while the request runs, so a request cancelled half-way still shows what it received."""

    error: str | None = None
    responded: bool = False  # an HTTP status line arrived: the target is reachable
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    content_events: int = 0
    usage_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """Everything that is the same for every request of a run."""

    url: str
    body: bytes
    headers: dict[str, str]
    timeout_s: float
    reader: type[EventReader]


async def stream_one(session: aiohttp.ClientSession, spec: RequestSpec, out: RequestOutcome) -> None:
    """Run one request to its end and record the result in `out`; never raises except on cancellation."""
    try:
        async with asyncio.timeout(spec.timeout_s):
            await _exchange(session, spec, out)
    except TimeoutError:
        out.error = "timeout"
    except aiohttp.ClientConnectorError:
        out.error = "connect"
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError):
        out.error = "reset"
    except (aiohttp.ClientError, ConnectionError):
        out.error = "client_error"


async def _exchange(session: aiohttp.ClientSession, spec: RequestSpec, out: RequestOutcome) -> None:
    reader = spec.reader()
    classify = reader.classify
    feed = SSEParser().feed
    gaps = out.gaps_s
    ended = False
    started = perf_counter()
    last = started
    async with session.post(spec.url, data=spec.body, headers=spec.headers) as resp:
        out.responded = True
        if resp.status != 200:
            out.error = f"http_{resp.status}"
            await resp.read()  # drain so the connection can be reused
            return
        content = resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                if ended:
                    continue  # drain to EOF after the terminator so the connection is reused
                now = perf_counter()
                for name, data in feed(chunk):
                    signal = classify(name, data)
                    if signal == CONTENT:
                        if out.ttft_s is None:
                            out.ttft_s = now - started
                        else:
                            gaps.append(now - last)
                        last = now
                        out.content_events += 1
                    elif signal == END:
                        ended = True
                        break
                    elif signal >= ERROR:  # ERROR or BAD_EVENT
                        out.error = "stream_error" if signal == ERROR else "bad_event"
                        out.usage_tokens = reader.usage_tokens
                        resp.close()  # stop reading a stream that has failed
                        return
        except (aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            if not ended:
                raise
            # The stream had already ended properly; a broken tail does not undo that.
    out.usage_tokens = reader.usage_tokens
    if not ended:
        out.error = "incomplete"
