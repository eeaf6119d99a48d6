"""Admin reads of the usage records: aggregates (`GET /v1/usage`) and one request (`GET /v1/requests/{id}`)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from sluicegate.observe.usage import UsageStore
from sluicegate.server.auth import KeyRing
from sluicegate.server.errors import error_response
from sluicegate.server.validate import id_headers
from sluicegate.types import GatewayError, Outcome

USAGE_STORE = web.AppKey("usage_store", UsageStore)
_encode = msgspec.json.Encoder()


def _check_admin(request: web.Request, keys: KeyRing) -> None:
    key = keys.authenticate(request.headers.get("Authorization"))
    if key is not None and not key.admin:
        raise GatewayError(403, f"API key {key.name!r} is not an admin key (auth.keys[].admin: true).",
                           type="invalid_request_error", code="admin_required", outcome=Outcome.REJECTED)


def _store(request: web.Request) -> UsageStore:
    store = request.app.get(USAGE_STORE)
    if store is None:
        raise GatewayError(404, "Usage records are turned off (usage.enabled: false).", type="invalid_request_error",
                           code="usage_disabled", outcome=Outcome.INVALID)
    return store


def add_usage_routes(app: web.Application, keys_key: web.AppKey[KeyRing]) -> None:
    async def usage(request: web.Request) -> web.Response:
        ids = id_headers(request.headers)
        try:
            _check_admin(request, request.app[keys_key])
            since_text = request.query.get("since")
            try:
                since = float(since_text) if since_text else None
            except ValueError:
                raise GatewayError(400, f"since={since_text!r} is not a number; give unix seconds, e.g. 1700000000.",
                                   type="invalid_request_error", code="invalid_since", param="since",
                                   outcome=Outcome.INVALID) from None
            rows = await _store(request).aggregate(request.query.get("key") or None,
                                                   request.query.get("model") or None, since)
        except GatewayError as error:
            return error_response(error, ids)
        body = {"object": "list", "data": list(rows)}
        return web.Response(body=_encode.encode(body), content_type="application/json")

    async def one_request(request: web.Request) -> web.Response:
        ids = id_headers(request.headers)
        wanted = request.match_info["request_id"]
        try:
            _check_admin(request, request.app[keys_key])
            record = await _store(request).get(wanted)
            if record is None:
                raise GatewayError(404, f"No usage record for request {wanted!r} (records are written shortly after "
                                   "a request ends).", type="invalid_request_error", code="request_not_found",
                                   outcome=Outcome.INVALID)
        except GatewayError as error:
            return error_response(error, ids)
        return web.Response(body=_encode.encode(record), content_type="application/json")

    app.router.add_get("/v1/usage", usage)
    app.router.add_get("/v1/requests/{request_id}", one_request)
