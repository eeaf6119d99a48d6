"""Turns a parsed request into the playback that answers it: control endpoints, model endpoints, errors."""

from __future__ import annotations

import math
import urllib.parse
from typing import Any, Final

import msgspec

from sluicegate.mock.behaviour import MockBehaviour, MockValueError
from sluicegate.mock.connection import IncomingRequest
from sluicegate.mock.formats.base import StreamFormat, WireApi
from sluicegate.mock.http import full_response
from sluicegate.mock.playback import DelayedReply, Fault, Playback, ResponseSink, StreamPlayback
from sluicegate.mock.stats import MockStats, RequestRecord
from sluicegate.mock.tokens import TokenSource

CONTROL_PREFIX: Final = "/_mock/"
_TAG_PREFIX: Final = CONTROL_PREFIX + "requests/"
_ERROR_STATUS: Final = 500  # non-streaming replies fail with this where a stream would get an error event


def _header_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name, value in headers:
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


def _first_fault(behaviour: MockBehaviour) -> tuple[Fault | None, int]:
    """The fault that fires first (error, reset, stall win ties in that order)."""
    faults: tuple[tuple[int | None, Fault], ...] = (
        (behaviour.error_after, "error"),
        (behaviour.reset_after, "reset"),
        (behaviour.stall_after, "stall"),
    )
    candidates = [(at, fault) for at, fault in faults if at is not None]
    if not candidates:
        return None, 0
    at, fault = min(candidates, key=lambda candidate: candidate[0])
    return fault, at


class MockRouter:
    """The connection's dispatch function: one playback per complete request."""

    def __init__(self, api: WireApi, defaults: MockBehaviour, stats: MockStats) -> None:
        self._api = api
        self._defaults = defaults
        self._stats = stats

    def __call__(self, sink: ResponseSink, request: IncomingRequest) -> Playback:
        if request.path.startswith(CONTROL_PREFIX):
            return self._control(sink, request)
        record = RequestRecord(request.path)
        self._stats.begin(record)
        static = self._api.static_body(request.path)
        if static is not None:
            if request.method != "GET":
                return self._error(sink, record, request, 405, f"use GET for {request.path}")
            data = full_response(200, static, keep_alive=request.keep_alive)
            return DelayedReply(sink, record, self._stats, keep_alive=request.keep_alive, data=data)
        stream_format = self._api.stream_format(request.path)
        if stream_format is None:
            return self._error(sink, record, request, 404, f"unknown path {request.path}", code="unknown_url")
        if request.method != "POST":
            return self._error(sink, record, request, 405, f"use POST for {request.path}")
        try:
            body = msgspec.json.decode(request.body)
        except msgspec.DecodeError as exc:
            return self._error(sink, record, request, 400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return self._error(sink, record, request, 400, "request body must be a JSON object")
        try:
            mock = body.get("mock")
            behaviour = self._defaults if mock is None else self._defaults.with_overrides(mock)
        except MockValueError as exc:
            return self._error(sink, record, request, 400, str(exc), param=exc.param, code="invalid_mock")
        if behaviour.tag is not None:
            record.headers = _header_dict(request.headers)
            record.body = body
            self._stats.remember(behaviour.tag, record)
        return self._play(sink, record, request, stream_format, body, behaviour)

    def _play(
        self,
        sink: ResponseSink,
        record: RequestRecord,
        request: IncomingRequest,
        stream_format: StreamFormat,
        body: dict[str, Any],
        behaviour: MockBehaviour,
    ) -> Playback:
        keep_alive = request.keep_alive
        if behaviour.status is not None:
            return self._status_reply(sink, record, keep_alive, behaviour)
        info = stream_format.describe(body)
        source = TokenSource.for_behaviour(behaviour)
        usage = info.include_usage if behaviour.usage is None else behaviour.usage
        encoder = stream_format.open(info, source, usage)
        fault, fault_at = _first_fault(behaviour)
        if info.stream:
            return StreamPlayback(
                sink,
                record,
                self._stats,
                keep_alive=keep_alive,
                encoder=encoder,
                content_type=stream_format.stream_content_type,
                count=source.count,
                interval=behaviour.interval,
                headers_delay=behaviour.headers_delay,
                first_delay=behaviour.first_delay,
                finish_reason=behaviour.finish_reason,
                fault=fault,
                fault_at=fault_at,
            )
        produced = source.count if fault is None else min(fault_at, source.count)
        record.tokens_sent = produced
        delay = behaviour.headers_delay + behaviour.first_delay + produced * behaviour.interval
        if fault is None:
            data = full_response(200, encoder.body(produced, behaviour.finish_reason), keep_alive=keep_alive)
            return DelayedReply(sink, record, self._stats, keep_alive=keep_alive, delay=delay, data=data)
        if fault == "error":
            data = full_response(_ERROR_STATUS, self._api.stream_error_body(), keep_alive=keep_alive)
            return DelayedReply(
                sink, record, self._stats, keep_alive=keep_alive, delay=delay, data=data,
                status=_ERROR_STATUS, state="errored",
            )  # fmt: skip
        return DelayedReply(sink, record, self._stats, keep_alive=keep_alive, delay=delay, then=fault)

    def _status_reply(
        self, sink: ResponseSink, record: RequestRecord, keep_alive: bool, behaviour: MockBehaviour
    ) -> Playback:
        status = behaviour.status
        assert status is not None
        extra = []
        if behaviour.retry_after is not None:
            extra.append(("Retry-After", str(math.ceil(behaviour.retry_after))))
        body = self._api.error_body(status, f"mock upstream status {status}", param=None, code=None)
        data = full_response(status, body, keep_alive=keep_alive, extra_headers=extra)
        return DelayedReply(
            sink, record, self._stats, keep_alive=keep_alive, delay=behaviour.headers_delay, data=data,
            status=status, state="status",
        )  # fmt: skip

    def _error(
        self,
        sink: ResponseSink,
        record: RequestRecord | None,
        request: IncomingRequest,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
    ) -> Playback:
        body = self._api.error_body(status, message, param=param, code=code)
        data = full_response(status, body, keep_alive=request.keep_alive)
        return DelayedReply(
            sink, record, self._stats, keep_alive=request.keep_alive, data=data, status=status, state="status"
        )

    def _control(self, sink: ResponseSink, request: IncomingRequest) -> Playback:
        path, method = request.path, request.method
        if path == CONTROL_PREFIX + "stats" and method == "GET":
            return self._json(sink, request, self._stats.snapshot())
        if path == CONTROL_PREFIX + "reset" and method == "POST":
            self._stats.reset()
            return self._json(sink, request, {"ok": True})
        if path.startswith(_TAG_PREFIX) and method == "GET":
            tag = urllib.parse.unquote(path[len(_TAG_PREFIX) :])
            found = self._stats.lookup(tag)
            if found is not None:
                return self._json(sink, request, found.as_dict())
            return self._error(sink, None, request, 404, f"no request tagged {tag!r}", code="unknown_tag")
        return self._error(sink, None, request, 404, f"unknown control endpoint {method} {path}")

    def _json(self, sink: ResponseSink, request: IncomingRequest, payload: object) -> Playback:
        data = full_response(200, msgspec.json.encode(payload), keep_alive=request.keep_alive)
        return DelayedReply(sink, None, self._stats, keep_alive=request.keep_alive, data=data)
