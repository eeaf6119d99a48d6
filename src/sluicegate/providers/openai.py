"""OpenAI-compatible upstreams (OpenAI, vLLM, SGLang, TGI, llama.cpp server, Ollama's /v1): pass-through.

The stream goes to the client as the upstream wrote it. Per emitted batch the only work is one SSE boundary
search and one regex scan for the few things the gateway must know (usage, error events, finish reason); JSON is
parsed only for the events that regex matched — the first event, the usage chunk, an error.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from sluicegate.config.schema import DeploymentConfig
from sluicegate.providers.base import (
    NonStreamResult,
    NothingToPrepare,
    UpstreamEventError,
    UpstreamRequest,
    Usage,
    bearer,
    upstream_headers,
)
from sluicegate.types import Endpoint, GatewayError, GatewayRequest
from sluicegate.wire.sse import SSEDecoder, SSEFrameSplitter, encode_event

# Raw JSON keys cannot occur inside an encoded string value (its quotes are escaped), so a match is structural.
_INTERESTING = re.compile(
    rb'"(?:usage"\s*:\s*\{|error"\s*:\s*[{"]|type"\s*:\s*"(?:error|response\.failed)"|finish_reason"\s*:\s*")'
)
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


def _json(data: str | bytes) -> Any:
    try:
        return _decode.decode(data)
    except msgspec.DecodeError:
        return None


def _usage_from(obj: dict[str, Any]) -> Usage | None:
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        response = obj.get("response")  # Responses API: response.completed carries response.usage
        usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return Usage(prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)


def _error_from(obj: dict[str, Any]) -> UpstreamEventError | None:
    error = obj.get("error")
    if obj.get("type") == "response.failed":
        response = obj.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        error = error or {"message": "upstream response failed"}
    elif obj.get("type") == "error" and not isinstance(error, dict | str):
        error = obj  # Responses API flat form: {"type":"error","code","message","param"}
    if isinstance(error, str):
        return UpstreamEventError(message=error)
    if isinstance(error, dict):
        code = error.get("code")
        return UpstreamEventError(
            message=str(error.get("message") or "upstream error"),
            code=None if code is None else str(code),
            type=None if error.get("type") is None else str(error.get("type")),
        )
    return None


def _plain_data(event: bytes) -> bytes | None:
    """The data of an event in the shape every OpenAI-compatible server writes (one `data: ` line, LF endings),
    sliced out directly; None for any other shape."""
    if event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n") == 2 and b"\r" not in event:
        return event[6:-2]
    return None


def _event_data(event: bytes) -> bytes | str:
    plain = _plain_data(event)
    return plain if plain is not None else "".join(e.data for e in SSEDecoder().feed(event + b"\n\n"))


class OpenAIPassthroughCodec:
    __slots__ = ("_decoder", "_held", "_last", "_responses", "_splitter", "_strip_usage", "error", "finish_reason",
                 "first_error", "started", "usage")

    def __init__(self, endpoint: Endpoint, strip_usage: bool, max_event_bytes: int) -> None:
        self._splitter = SSEFrameSplitter(max_event_bytes)
        self._decoder: SSEDecoder | None = SSEDecoder(max_event_bytes)
        self._held = b""
        self._last = b""  # the last batch sent: at the end it tells whether the stream was finished properly
        self._responses = endpoint is Endpoint.RESPONSES
        self._strip_usage = strip_usage
        self.started = False
        self.error: UpstreamEventError | None = None
        self.first_error: UpstreamEventError | None = None
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def feed(self, data: bytes) -> bytes:
        splitter = self._splitter
        # The splitter's common case inline (a read of whole events): one call less per event on the hot path.
        out = data if not splitter.pending_bytes and data.endswith(b"\n\n") else splitter.feed(data)
        if not out:
            return out
        self._last = out
        if not self.started:
            return self._first(out)
        if _INTERESTING.search(out) is None:
            return out
        return self._inspect(out)

    def _first(self, out: bytes) -> bytes:
        """Until the first event with data: comments are held (they do not count as a first chunk)."""
        first: bytes | str | None = None
        if not self._held and out.startswith(b"data: "):
            end = out.find(b"\n\n") + 2
            if end > 1:
                first = _plain_data(out[:end])
        if first is None:
            assert self._decoder is not None
            events = self._decoder.feed(out)
            if not events:
                self._held += out
                return b""
            first = events[0].data
        self.started = True
        self._decoder = None
        if first not in ("[DONE]", b"[DONE]"):
            obj = _json(first)
            if isinstance(obj, dict):
                self.first_error = self.error = _error_from(obj)
                if self.error is not None:
                    return b""
        held, self._held = self._held, b""
        if _INTERESTING.search(out) is not None:
            out = self._inspect(out)
        return held + out

    def _inspect(self, out: bytes) -> bytes:
        kept: list[bytes] = []
        dropped = False
        start = 0
        for match in _EVENT_END.finditer(out):
            event = out[start : match.end()]
            start = match.end()
            if _INTERESTING.search(event) is not None and not self._look_inside(event):
                dropped = True
                continue
            kept.append(event)
        if start < len(out):
            kept.append(out[start:])
        return b"".join(kept) if dropped else out

    def _look_inside(self, event: bytes) -> bool:
        """Record usage/error/finish reason from one event; False if the event must not reach the client."""
        obj = _json(_event_data(event))
        if not isinstance(obj, dict):
            return True
        usage = _usage_from(obj)
        if usage is not None:
            self.usage = usage
        error = _error_from(obj)
        if error is not None:
            self.error = error
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                    self.finish_reason = choice["finish_reason"]
            if not choices and usage is not None and self._strip_usage:
                return False  # the usage chunk the gateway asked for on its own behalf
        elif self._responses and obj.get("type") == "response.completed":
            self.finish_reason = "stop"
        return True

    def finish(self) -> bytes:
        """The bytes of an unterminated last event go out as they came. A stream that ended with neither a finish
        reason nor `[DONE]` was cut short: it is counted as an upstream error (the client gets what was sent)."""
        tail = self._splitter.flush()
        if self.error is None and self.finish_reason is None and b"[DONE]" not in self._last + tail:
            self.error = UpstreamEventError("the upstream ended the stream before it was finished",
                                            code="upstream_truncated")
        return tail

    def error_event(self, code: str, message: str) -> bytes:
        if self._responses:
            body = {"type": "error", "code": code, "message": message, "param": None, "sequence_number": 0}
            return encode_event(_encode.encode(body), "error")
        error = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
        return encode_event(_encode.encode(error))


class OpenAIAdapter(NothingToPrepare):
    """Pass-through for any OpenAI-compatible server; `name` is the configured provider kind."""

    def __init__(self, name: str = "openai") -> None:
        self.name = name

    def build_request(self, req: GatewayRequest, deployment: DeploymentConfig, upstream_model: str) -> UpstreamRequest:
        assert deployment.api_base is not None
        body = dict(req.body)
        body["model"] = upstream_model
        if req.stream and req.endpoint is not Endpoint.RESPONSES and not req.client_wants_usage:
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        headers = upstream_headers(req, deployment, bearer(deployment))
        return UpstreamRequest(f"{deployment.api_base}/{req.endpoint.value}", headers, _encode.encode(body))

    def stream_codec(self, req: GatewayRequest, max_event_bytes: int) -> OpenAIPassthroughCodec:
        return OpenAIPassthroughCodec(req.endpoint, strip_usage=not req.client_wants_usage,
                                      max_event_bytes=max_event_bytes)

    def error_from_response(self, status: int, body: bytes, retry_after: float | None) -> GatewayError:
        obj = _json(body) if body else None
        error = obj.get("error") if isinstance(obj, dict) else None
        client_status = status if 400 <= status <= 599 else 502
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return GatewayError(client_status, error["message"], type=str(error.get("type") or "upstream_error"),
                                code=None if error.get("code") is None else str(error.get("code")),
                                retry_after=retry_after, upstream_body=body)
        snippet = error if isinstance(error, str) else body[:200].decode("utf-8", "replace").strip()
        return GatewayError(client_status, f"upstream answered HTTP {status}: {snippet or '(empty body)'}",
                            type="upstream_error", code=f"upstream_http_{status}", retry_after=retry_after)

    def nonstream_result(self, req: GatewayRequest, body: bytes) -> NonStreamResult:
        obj = _json(body)
        usage = _usage_from(obj) if isinstance(obj, dict) else None
        finish = None
        if isinstance(obj, dict) and isinstance(obj.get("choices"), list) and obj["choices"]:
            first = obj["choices"][0]
            finish = first.get("finish_reason") if isinstance(first, dict) else None
        return NonStreamResult(body=body, usage=usage, finish_reason=finish if isinstance(finish, str) else None)
