"""The aiohttp application: routes, request validation, error mapping, /metrics and /healthz."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluicegate.config.schema import Config
from sluicegate.gateway.accounting import Accountant, RequestRecord
from sluicegate.gateway.admission import ClientKey
from sluicegate.gateway.core import Gateway
from sluicegate.gateway.routing import Route
from sluicegate.observe.live import LiveStats
from sluicegate.observe.metrics import Metrics
from sluicegate.observe.usage import UsageRecorder, make_usage_store
from sluicegate.server.auth import KeyRing, forbidden_model
from sluicegate.server.client_stream import AiohttpClientStream
from sluicegate.server.dashboard import add_dashboard_routes
from sluicegate.server.demo import DemoUpstream
from sluicegate.server.draining import DRAINING
from sluicegate.server.errors import error_response
from sluicegate.server.usage_api import USAGE_STORE, add_usage_routes
from sluicegate.server.validate import id_headers, parse_request
from sluicegate.state.factory import make_backend
from sluicegate.types import Endpoint, GatewayError, GatewayRequest, Outcome

GATEWAY = web.AppKey("gateway", Gateway)
CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
KEYS = web.AppKey("keys", KeyRing)
LIVE = web.AppKey("live", LiveStats)
ACCOUNTANT = web.AppKey("accountant", Accountant)

UNKNOWN_MODEL_LABEL = "(unknown)"
MAX_RECORDED_MODEL = 256  # characters of an unknown model name kept in a refused request's usage record


async def _read_request(request: web.Request, endpoint: Endpoint, ids: dict[str, str], arrived: float,
                        seen: _Seen) -> tuple[GatewayRequest, Route, ClientKey | None]:
    """Authenticate, read and validate the request and resolve its model. What was learnt before a refusal is left
    in `seen`, for the refused request's usage record."""
    key = seen.key = request.app[KEYS].authenticate(request.headers.get("Authorization"))
    limit = request.app[CONFIG].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    req = seen.req = parse_request(raw, endpoint, ids["x-request-id"], arrived)
    req.client_request_id = ids.get("x-client-request-id")
    if key is not None:
        req.key_name = key.name
        if not key.allows(req.model):
            raise forbidden_model(key, req.model)
    route = request.app[GATEWAY].router.resolve(req.model)
    return req, route, key


class _Seen:
    """What the server knew of a request when it refused it: the key, the parsed body."""

    __slots__ = ("key", "req")

    def __init__(self) -> None:
        self.key: ClientKey | None = None
        self.req: GatewayRequest | None = None


def _refused(request: web.Request, endpoint: Endpoint, ids: dict[str, str], arrived: float, seen: _Seen,
             error: GatewayError) -> None:
    """A request refused before routing (400, 401, 403, 404, 413) gets its usage record and access-log line like any
    other (model: what the client asked for, once the body was read) and is counted in sluicegate_requests_total
    with model "(unknown)"; it is no stream of a model, so nothing else."""
    req = seen.req
    if req is not None:
        req.model = req.model[:MAX_RECORDED_MODEL]  # the client's string, not a configured name: bound what is kept
    else:
        req = GatewayRequest(id=ids["x-request-id"], endpoint=endpoint, body={}, model=UNKNOWN_MODEL_LABEL,
                             stream=False, client_wants_usage=False, arrived=arrived, arrived_wall=time.time(),
                             key_name=seen.key.name if seen.key is not None else None,
                             client_request_id=ids.get("x-client-request-id"), holder=ids["x-request-id"])
    record = RequestRecord(req, UNKNOWN_MODEL_LABEL, outcome=error.outcome, status=error.status,
                           ended=time.monotonic())
    request.app[ACCOUNTANT].refused(record)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"The request body is larger than server.max_body_bytes ({limit} bytes).",
                        type="invalid_request_error", code="request_too_large", outcome=Outcome.INVALID)


def _endpoint_handler(endpoint: Endpoint):  # type: ignore[no-untyped-def]
    async def handle(request: web.Request) -> web.StreamResponse:
        ids = id_headers(request.headers)
        gateway = request.app[GATEWAY]
        # Measurements use time.monotonic(): uvloop's loop.time() ticks in whole milliseconds. Deadlines compare it
        # with loop.time(); both count CLOCK_MONOTONIC, so they differ by at most a tick.
        arrived = time.monotonic()
        seen = _Seen()
        try:
            req, route, key = await _read_request(request, endpoint, ids, arrived, seen)
        except GatewayError as error:
            _refused(request, endpoint, ids, arrived, seen, error)
            return error_response(error, ids)
        if req.stream:
            client = AiohttpClientStream(
                request, ids, write_buffer_high=gateway.config.server.client_write_buffer,
                end_timeout=route.pool.config.timeouts.write_stall,
            )
            try:
                await gateway.stream(req, client, route, key)
            except GatewayError as error:
                return error_response(error, ids)
            return client.response
        try:
            record, result = await gateway.complete(req, route, key)
        except GatewayError as error:
            return error_response(error, ids)
        headers = dict(ids)
        if record.deployment:
            headers["x-sluicegate-deployment"] = record.deployment
            headers["x-sluicegate-attempts"] = str(record.attempts)
        return web.Response(body=result.body, content_type=result.content_type, headers=headers)

    return handle


async def models(request: web.Request) -> web.Response:
    try:
        key = request.app[KEYS].authenticate(request.headers.get("Authorization"))
    except GatewayError as error:
        return error_response(error, id_headers(request.headers))
    names = [n for n in request.app[GATEWAY].router.public_models() if key is None or key.allows(n)]
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "sluicegate"} for n in names]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    coordinator = request.app.get(DRAINING)
    if coordinator is not None and coordinator.draining:
        # Shutting down: load balancers that still reach us on an open connection take this instance out.
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].exposition_registry())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    demo: DemoUpstream | None = None
    if any(d.provider == "demo" for m in config.models for d in m.deployments):
        demo = DemoUpstream()
        await demo.start()
    state = make_backend(config.state.backend, redis_url=config.state.redis_url, lease_ttl=config.state.lease_ttl,
                         redis_timeout=config.state.redis_timeout, on_unavailable=config.state.on_unavailable,
                         expected_instances=config.state.expected_instances, key_prefix=config.state.key_prefix)
    state_available = app[METRICS].state_available
    state_available.set(1.0)
    # The backend logs each transition itself; the gauge follows it (0 while degraded, see state.on_unavailable).
    state.add_availability_listener(lambda available: state_available.set(1.0 if available else 0.0))
    await state.start()
    gateway = Gateway(config, app[METRICS], state, demo_api_base=demo.api_base if demo else None,
                      accountant=app[ACCOUNTANT])
    await gateway.start()
    app[GATEWAY] = gateway
    try:
        yield
    finally:
        await gateway.close()
        await state.close()
        if demo is not None:
            await demo.stop()


async def _observability(app: web.Application) -> AsyncIterator[None]:
    """Usage records (store + off-hot-path recorder) and the accountant every request ends in. Runs before the
    gateway starts and closes after it has stopped, so the last records are flushed."""
    config = app[CONFIG]
    metrics_ = app[METRICS]
    store = None
    recorder = None
    if config.usage.enabled:
        store = make_usage_store(config.usage.dsn, prepared_statements=config.usage.prepared_statements)
        await store.start()
        app[USAGE_STORE] = store
        dropped = metrics_.usage_dropped
        recorder = UsageRecorder(store, max_queue=config.usage.max_queue, batch_size=config.usage.batch_size,
                                 flush_interval=config.usage.flush_interval,
                                 on_drop=lambda reason, n: dropped.labels(reason).inc(n))
        await recorder.start()
    app[ACCOUNTANT] = Accountant(metrics_, app[LIVE], recorder, access_log_enabled=config.logging.access_log,
                                 metrics_enabled=config.server.metrics)
    try:
        yield
    finally:
        if recorder is not None:
            await recorder.close()
        if store is not None:
            await store.close()


async def _tune_gc(app: web.Application) -> None:
    """Everything allocated at start-up lives as long as the process: move it out of the collector's way, and
    collect the young generation less often (a stream allocates many short-lived objects, and a completed one
    leaves none in reference cycles: tests/test_reference_cycles.py)."""
    if os.environ.get("SLUICEGATE_GC_TUNING", "1") == "0":
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)


def create_app(config: Config, metrics_: Metrics | None = None) -> web.Application:
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[CONFIG] = config
    app[METRICS] = metrics_ or Metrics()
    app[KEYS] = KeyRing(config.auth)
    app[LIVE] = LiveStats()
    app.on_startup.append(_tune_gc)
    app.cleanup_ctx.append(_observability)
    app.cleanup_ctx.append(_lifecycle)
    add_dashboard_routes(app, LIVE)
    add_usage_routes(app, KEYS)
    app.router.add_post("/v1/chat/completions", _endpoint_handler(Endpoint.CHAT))
    app.router.add_post("/v1/completions", _endpoint_handler(Endpoint.COMPLETIONS))
    app.router.add_post("/v1/responses", _endpoint_handler(Endpoint.RESPONSES))
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
