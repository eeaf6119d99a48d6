"""One request's life: route -> admit -> attempt(s) -> pump -> account.

Before the first byte reaches the client every failure is a clean HTTP error (`GatewayError`, raised to the server
layer); after it, a failure is one error event in the client's format and the stream is closed. Whatever ends a
request, `account()` runs exactly once and the upstream connection is closed (or returned to the pool when it was
read to its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from time import monotonic

from sluicegate import background
from sluicegate.config.schema import Config
from sluicegate.gateway.accounting import Accountant, RequestRecord, annotate
from sluicegate.gateway.admission import Admission, ClientKey, Slots
from sluicegate.gateway.attempt import AttemptFailed, StreamStart, UpstreamCall, read_body, read_first_event, send
from sluicegate.gateway.client_stream import ClientGone, ClientStream
from sluicegate.gateway.deadlines import StreamDeadlines, deadline_error
from sluicegate.gateway.pump import Pump, PumpLimits
from sluicegate.gateway.rate import StreamRateLimiter
from sluicegate.gateway.relay_queue import relay_queue
from sluicegate.gateway.retry import RetryDriver
from sluicegate.gateway.routing import Deployment, Route, Router
from sluicegate.gateway.selection import Selector
from sluicegate.gateway.shutdown import cancelled_for_shutdown
from sluicegate.observe.looplag import LoopLagMonitor
from sluicegate.observe.metrics import Metrics
from sluicegate.providers.base import NonStreamResult
from sluicegate.state.base import StateBackend
from sluicegate.types import GatewayError, GatewayRequest, Outcome
from sluicegate.upstream.client import UpstreamClient
from sluicegate.upstream.errors import UpstreamError
from sluicegate.wire.errors import WireError

log = logging.getLogger("sluicegate.gateway")

BUDGET_GAUGE_INTERVAL = 1.0


def _shutdown_error() -> GatewayError:
    return GatewayError(503, "The gateway is shutting down; retry the request.", type="server_error",
                        code="shutdown", outcome=Outcome.SHUTDOWN, retry_after=1.0)


class Gateway:
    def __init__(self, config: Config, metrics: Metrics, state: StateBackend, *,
                 demo_api_base: str | None = None, accountant: Accountant | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.accountant = accountant or Accountant(metrics, access_log_enabled=False)
        self.state = state
        self.router = Router(config, demo_api_base)
        self.admission = Admission(state, metrics, config.server.max_streams)
        self.selector = Selector(state, shared=config.state.backend != "memory")
        self.retry = RetryDriver(metrics, state, self.admission, self.router, self.selector)
        self.lag = LoopLagMonitor(metrics)
        server = config.server
        self.upstream = UpstreamClient(read_size=server.upstream_read_buffer,
                                       socket_buffer=server.upstream_socket_buffer)
        self.limits = PumpLimits(server.chunks_per_yield, server.bytes_per_yield)
        self._budget_task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self.lag.start(relay_queue(asyncio.get_running_loop()).push)
        self._budget_task = asyncio.get_running_loop().create_task(self._publish_budgets())

    async def _publish_budgets(self) -> None:
        """sluicegate_retry_budget_available, refreshed once a second (not per request)."""
        while not self._closing:
            for pool in self.router.pools:
                with contextlib.suppress(Exception):  # a state outage must not end the loop; it is visible elsewhere
                    await self.retry.publish_budget(pool)
            await asyncio.sleep(BUDGET_GAUGE_INTERVAL)

    async def close(self) -> None:
        self._closing = True
        self.lag.stop()
        await background.stop([self._budget_task], "gateway")
        self.upstream.close()

    # --- admission checks shared by both paths ------------------------------------------------------------------
    def _shed_check(self, record: RequestRecord) -> None:
        limit = self.config.server.shed_lag
        if limit and self.lag.lag > limit:
            self.metrics.rejections.labels("worker", "worker", "shed").inc()
            raise GatewayError(
                503, f"The gateway is overloaded (event-loop lag {self.lag.lag * 1000:.0f} ms); retry shortly.",
                type="server_error", code="overloaded", outcome=Outcome.SHED, retry_after=1.0)

    # --- streaming ----------------------------------------------------------------------------------------------
    def _queue_timeout(self, route: Route) -> float:
        model = route.pool.config
        return model.queue_timeout if model.queue_timeout is not None else self.config.server.queue_timeout

    async def stream(self, req: GatewayRequest, client: ClientStream, route: Route,
                     key: ClientKey | None = None) -> RequestRecord:
        """Serve a streaming request. Raises GatewayError only while nothing has been sent to the client."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        model = route.pool.config
        server = self.config.server
        record = RequestRecord(req, model.name)
        hb_interval = model.heartbeat_interval if model.heartbeat_interval is not None else server.heartbeat_interval
        hb_first = (model.heartbeat_before_first_chunk if model.heartbeat_before_first_chunk is not None
                    else server.heartbeat_before_first_chunk)

        def heartbeat() -> None:
            self.metrics.heartbeats.labels(model.name).inc()
            client.heartbeat()

        deadlines = StreamDeadlines(
            loop, task, model.timeouts, heartbeat_interval=hb_interval, heartbeat_before_first_chunk=hb_first,
            send_heartbeat=heartbeat, write_stalled_since=lambda: client.stalled_since,
        )
        client.on_stall = deadlines.write_stalled
        in_flight = self.metrics.child(self.metrics.streams_in_flight, model.name)
        in_flight.inc()
        self.accountant.started(record)
        start: StreamStart | None = None
        slots: Slots | None = None
        clean_end = False
        try:
            self._shed_check(record)
            deadlines.start(req.arrived, total=model.timeouts.total)
            slots = await self.admission.admit(req.holder, key, self._queue_timeout(route))

            async def attempt(deployment: Deployment, upstream_model: str, on_close: Callable[[], None]) -> StreamStart:
                return await self._attempt_stream(req, deployment, upstream_model, on_close, deadlines)

            start = await self.retry.run(req, route, record, slots, self._queue_timeout(route), attempt, deadlines)
            record.deployment = start.call.deployment.label
            client.headers["x-sluicegate-deployment"] = record.deployment
            client.headers["x-sluicegate-attempts"] = str(record.attempts)
            deadlines.adopt(start.call.deployment.timeouts, req.arrived)
            await client.write(start.first)
            now = monotonic()
            record.ttft = now - req.arrived
            deadlines.streaming(now)
            codec = start.codec
            rate = None
            if model.max_events_per_second or model.max_bytes_per_second:
                rate = StreamRateLimiter(model.max_events_per_second, model.max_bytes_per_second, now)
                rate.delay(start.first, now)  # the first batch went out at once; it still counts
            assert start.call.conn is not None
            await Pump(start.call.conn, codec, client, deadlines, record.gaps, monotonic, self.limits, rate).run()
            record.usage = codec.usage
            record.finish_reason = codec.finish_reason
            if codec.error is not None:
                record.outcome = Outcome.UPSTREAM_ERROR
            clean_end = True
            deadlines.stop()
            await client.end()
        except asyncio.CancelledError:
            if cancelled_for_shutdown(task) and task.cancelling() == 1:
                task.uncancel()
                record.outcome = Outcome.SHUTDOWN
                error = _shutdown_error()
                if not client.committed:
                    record.status = 503
                    raise annotate(error, record) from None
                await self._end_with_error(client, start, error, clean=True, route=route, req=req)
                return record
            fired = deadlines.fired
            if fired is None or task.uncancel() > 0:
                record.outcome = Outcome.CLIENT_DISCONNECTED
                record.client_disconnected = True
                if not client.committed:
                    record.status = 499  # nginx's "client closed request": nothing was answered
                raise
            record.outcome = fired
            self.metrics.deadline_hits.labels(model.name, fired.value).inc()
            error = deadline_error(fired, start.call.deployment.timeouts if start is not None else model.timeouts)
            if not client.committed:
                record.status = 504
                raise annotate(error, record) from None
            await self._end_with_error(client, start, error, clean=fired is not Outcome.WRITE_STALL, route=route,
                                       req=req)
        except ClientGone:
            record.outcome = Outcome.CLIENT_DISCONNECTED
            record.client_disconnected = True
        except GatewayError as error:
            record.outcome = error.outcome
            if error.outcome in (Outcome.REJECTED, Outcome.SHED):
                self.accountant.rejected(model.name, error.code or error.outcome.value)
            if not client.committed:
                record.status = error.status
                raise annotate(error, record) from None
            await self._end_with_error(client, start, error, clean=True, route=route, req=req)
        except (UpstreamError, WireError) as exc:
            # The upstream broke after the stream was committed.
            record.outcome = Outcome.UPSTREAM_ERROR
            message = "The upstream connection broke mid-stream." if not isinstance(exc, WireError) else (
                f"The upstream sent a malformed stream: {exc}")
            code = "upstream_reset" if not isinstance(exc, WireError) else "upstream_malformed"
            await self._end_with_error(client, start, GatewayError(502, message, type="upstream_error", code=code),
                                       route=route, req=req,
                                       clean=True)
        finally:
            deadlines.stop()
            # client -> deadlines -> (closure) -> client is a reference cycle holding the request's whole object
            # graph (aiohttp request, response, task): break it so refcounting frees them now, not a GC pass.
            client.on_stall = None
            if start is not None:
                start.call.close(reuse=clean_end)
            if slots is not None:
                slots.release()
            record.ended = monotonic()
            record.bytes_sent = client.bytes_sent
            record.sha256 = client.digest() if client.committed else None
            in_flight.dec()
            self.accountant.finish(record)
        return record

    async def _end_with_error(self, client: ClientStream, start: StreamStart | None, error: GatewayError,
                              *, clean: bool, route: Route | None = None, req: GatewayRequest | None = None) -> None:
        if start is not None:
            codec = start.codec
        else:
            # Committed by a heartbeat before any attempt produced an event: the client's format comes from the
            # adapter the model would have used.
            assert route is not None and req is not None
            codec = route.pool.deployments[0].adapter.stream_codec(req, self.config.server.max_event_bytes)
        event = codec.error_event(error.code or "error", error.message)
        with contextlib.suppress(ClientGone):
            await client.end(event, clean=clean)

    async def _attempt_stream(self, req: GatewayRequest, deployment: Deployment, upstream_model: str,
                              on_close: Callable[[], None], deadlines: StreamDeadlines) -> StreamStart:
        sent_at = monotonic()
        deadlines.waiting_for_first_chunk(sent_at, deployment.timeouts.first_chunk)
        call = await send(self.upstream, req, deployment, upstream_model, self.metrics, on_close)
        start = await read_first_event(call, req, self.config.server.max_event_bytes)
        seconds = monotonic() - sent_at
        deployment.observe_ttft(seconds)
        self.metrics.child(self.metrics.upstream_first_chunk, deployment.label).observe(seconds)
        return start

    # --- non-streaming ------------------------------------------------------------------------------------------
    async def complete(self, req: GatewayRequest, route: Route,
                       key: ClientKey | None = None) -> tuple[RequestRecord, NonStreamResult]:
        model = route.pool.config
        record = RequestRecord(req, model.name)
        self.accountant.started(record)
        slots: Slots | None = None
        try:
            self._shed_check(record)
            slots = await self.admission.admit(req.holder, key, self._queue_timeout(route))

            async def attempt(deployment: Deployment, upstream_model: str,
                              on_close: Callable[[], None]) -> NonStreamResult:
                return await self._attempt_complete(req, deployment, upstream_model, on_close)

            try:
                async with asyncio.timeout(model.timeouts.request):
                    result = await self.retry.run(req, route, record, slots, self._queue_timeout(route), attempt)
            except TimeoutError:
                self.metrics.deadline_hits.labels(model.name, Outcome.TIMEOUT_REQUEST.value).inc()
                raise GatewayError(504, f"The upstream did not answer within the request deadline "
                                   f"({model.timeouts.request:g}s).", type="timeout",
                                   code=Outcome.TIMEOUT_REQUEST.value, outcome=Outcome.TIMEOUT_REQUEST) from None
            record.ttft = monotonic() - req.arrived
            record.usage = result.usage
            record.finish_reason = result.finish_reason
            record.bytes_sent = len(result.body)
            record.sha256 = hashlib.sha256(result.body).hexdigest()
            return record, result
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and cancelled_for_shutdown(task) and task.cancelling() == 1:
                task.uncancel()
                record.outcome = Outcome.SHUTDOWN
                record.status = 503
                raise annotate(_shutdown_error(), record) from None
            record.outcome = Outcome.CLIENT_DISCONNECTED
            record.client_disconnected = True
            record.status = 499
            raise
        except GatewayError as error:
            record.outcome = error.outcome
            record.status = error.status
            if error.outcome in (Outcome.REJECTED, Outcome.SHED):
                self.accountant.rejected(model.name, error.code or error.outcome.value)
            raise annotate(error, record) from None
        finally:
            if slots is not None:
                slots.release()
            record.ended = monotonic()
            self.accountant.finish(record)

    async def _attempt_complete(self, req: GatewayRequest, deployment: Deployment, upstream_model: str,
                                on_close: Callable[[], None]) -> NonStreamResult:
        call: UpstreamCall = await send(self.upstream, req, deployment, upstream_model, self.metrics, on_close)
        try:
            body = await read_body(call, self.config.server.max_event_bytes)
        finally:
            call.close(reuse=True)
        return deployment.adapter.nonstream_result(req, body)


__all__ = ["AttemptFailed", "Gateway"]
