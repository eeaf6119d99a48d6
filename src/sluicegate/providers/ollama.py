"""Ollama's native `/api/chat` (NDJSON) behind OpenAI chat completions. (Ollama's `/v1` API is OpenAI-compatible:
use provider `ollama-openai` for it, which passes through.)

Request: messages keep their roles (system messages stay in place); images only as base64 data URLs (`images`);
assistant tool calls with arguments as objects; tool results with `tool_name` looked up from the call id. Sampling
options -> `options` (num_predict, temperature, top_p, stop, seed, presence/frequency penalty); response_format ->
`format` ("json" or the schema); `reasoning_effort` -> `think` (none -> false, other levels passed as the string,
which gpt-oss models read). `stream` is always sent: Ollama streams by default.

Stream: `message.content` -> content, `message.thinking` -> `reasoning_content`, tool calls arrive whole -> one
tool-call delta each (id `call_<request id>_<n>` unless Ollama gives one); the `done` line -> finish reason
(`tool_calls` when calls were made, since Ollama says `stop`), usage (prompt_eval_count, eval_count) and [DONE].
A `{"error": ...}` line is an error event.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from sluicegate.config.schema import DeploymentConfig
from sluicegate.providers.base import (
    NonStreamResult,
    NothingToPrepare,
    UpstreamEventError,
    UpstreamRequest,
    bearer,
    upstream_headers,
)
from sluicegate.providers.chat_request import (
    ChatRequest,
    ImagePart,
    TextPart,
    bad_request,
    parse_chat,
    require_chat,
)
from sluicegate.providers.openai_chunks import ToolCallOut, UsageCounts, completion_body
from sluicegate.providers.translating_codec import TranslatingCodec, event_error_status
from sluicegate.providers.upstream_errors import json_or_none, malformed_response, provider_error
from sluicegate.types import GatewayError, GatewayRequest
from sluicegate.wire.errors import CorruptFrame
from sluicegate.wire.ndjson import NDJSONSplitter

FINISH_REASONS: Final = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}

_encode = msgspec.json.Encoder().encode


# --- request ----------------------------------------------------------------------------------------------------
def _message(turn_role: str, text: str) -> dict[str, Any]:
    return {"role": turn_role, "content": text}


def chat_body(chat: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    names = chat.tool_names_by_id()
    messages: list[dict[str, Any]] = []
    for turn in chat.turns:
        message = _message(turn.role, turn.text())
        images: list[str] = []
        for part in turn.parts:
            if isinstance(part, ImagePart):
                if part.data is None:
                    raise bad_request("Provider ollama takes images only as base64 data URLs.", param="messages",
                                      code="unsupported_parameter")
                images.append(part.data)
            elif not isinstance(part, TextPart):
                raise bad_request("Provider ollama does not take file parts.", param="messages",
                                  code="unsupported_parameter")
        if images:
            message["images"] = images
        if turn.tool_calls:
            message["tool_calls"] = [
                {"function": {"name": c.name, "arguments": c.parsed_arguments()}} for c in turn.tool_calls]
        if turn.role == "tool":
            name = names.get(turn.tool_call_id or "")
            if name is not None:
                message["tool_name"] = name
        messages.append(message)
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    options: dict[str, Any] = {}
    for key, value in (("num_predict", chat.max_tokens), ("temperature", chat.temperature), ("top_p", chat.top_p),
                       ("seed", chat.seed), ("presence_penalty", chat.presence_penalty),
                       ("frequency_penalty", chat.frequency_penalty)):
        if value is not None:
            options[key] = value
    if chat.stop:
        options["stop"] = chat.stop
    if options:
        body["options"] = options
    if chat.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description or "",
                                              "parameters": t.parameters}}
            for t in chat.tools
        ]
    if chat.response_format is not None:
        body["format"] = chat.json_schema if chat.json_schema is not None else "json"
    if chat.reasoning_effort is not None:
        body["think"] = False if chat.reasoning_effort == "none" else chat.reasoning_effort
    return body


# --- stream -----------------------------------------------------------------------------------------------------
class _Function(msgspec.Struct):
    name: str = ""
    arguments: msgspec.Raw = msgspec.Raw()


class _ToolCall(msgspec.Struct):
    function: _Function | None = None
    id: str | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    thinking: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Line(msgspec.Struct):
    message: _Message | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    error: msgspec.Raw = msgspec.Raw()  # a string from Ollama; anything else is shown as JSON


_decode_line = msgspec.json.Decoder(_Line).decode
_decode_any = msgspec.json.Decoder().decode


def _error(raw: msgspec.Raw) -> UpstreamEventError:
    value = _decode_any(raw)
    message = value if isinstance(value, str) else bytes(raw).decode()
    return UpstreamEventError(message or "upstream error", code="upstream_error_event", type="upstream_error",
                              status=event_error_status(message))


class OllamaCodec(TranslatingCodec):
    __slots__ = ("_call_prefix", "_splitter", "_tools")

    provider = "ollama"

    def __init__(self, req: GatewayRequest, max_event_bytes: int) -> None:
        super().__init__(req)
        self._splitter = NDJSONSplitter(max_event_bytes)
        self._tools = 0
        self._call_prefix = f"call_{req.id}_"

    def _translate(self, data: bytes, out: list[bytes]) -> None:
        for line in self._splitter.feed(data):
            self._line(line, out)
            if self._ended:
                return

    def _translate_tail(self, out: list[bytes]) -> None:
        for line in self._splitter.finish():
            self._line(line, out)
            if self._ended:
                return

    def _line(self, raw: bytes, out: list[bytes]) -> None:
        try:
            line = _decode_line(raw)
        except msgspec.DecodeError as exc:
            raise CorruptFrame(f"ollama line is not valid: {exc}") from None
        self._events += 1
        if line.error:
            self._fail(_error(line.error), out)
            return
        message = line.message
        if message is not None:
            if message.thinking:
                out.append(self._open(out).reasoning(message.thinking))
            if message.content:
                out.append(self._open(out).content(message.content))
            for call in message.tool_calls or ():
                function = call.function or _Function()
                index = self._tools
                self._tools += 1
                out.append(self._open(out).tool_call(index, call.id or f"{self._call_prefix}{index}", function.name,
                                                     bytes(function.arguments).decode() or "{}"))
        if line.done:
            self.counts.prompt = line.prompt_eval_count
            self.counts.completion = line.eval_count
            self._counted()
            reason = FINISH_REASONS.get(line.done_reason or "stop", "stop")
            self._stop(out, "tool_calls" if reason == "stop" and self._tools else reason)
            self._end(out)


class OllamaAdapter(NothingToPrepare):
    name = "ollama"

    def build_request(self, req: GatewayRequest, deployment: DeploymentConfig, upstream_model: str) -> UpstreamRequest:
        require_chat(req, self.name)
        assert deployment.api_base is not None
        chat = parse_chat(req.body, self.name, deployment.forward_fields)
        body = chat_body(chat, upstream_model, req.stream)
        for key in deployment.forward_fields:
            if key in req.body:
                body[key] = req.body[key]
        headers = upstream_headers(req, deployment, bearer(deployment), stream_type="application/x-ndjson")
        return UpstreamRequest(f"{deployment.api_base}/api/chat", headers, _encode(body))

    def stream_codec(self, req: GatewayRequest, max_event_bytes: int) -> OllamaCodec:
        return OllamaCodec(req, max_event_bytes)

    def error_from_response(self, status: int, body: bytes, retry_after: float | None) -> GatewayError:
        obj = json_or_none(body)
        error = obj.get("error") if isinstance(obj, dict) else None
        return provider_error(self.name, status, status, error if isinstance(error, str) else None, None,
                              retry_after, body)

    def nonstream_result(self, req: GatewayRequest, body: bytes) -> NonStreamResult:
        try:
            line = _decode_line(body)
        except msgspec.DecodeError:
            raise malformed_response("ollama", "an /api/chat response") from None
        if line.error:
            error = _error(line.error)
            raise GatewayError(error.status, f"The upstream reported an error: {error.message}",
                               type="upstream_error", code=error.code)
        message = line.message or _Message()
        calls = [ToolCallOut(c.id or f"call_{req.id}_{i}", (c.function or _Function()).name,
                             bytes((c.function or _Function()).arguments).decode() or "{}")
                 for i, c in enumerate(message.tool_calls or ())]
        reason = FINISH_REASONS.get(line.done_reason or "stop", "stop")
        finish = "tool_calls" if reason == "stop" and calls else reason
        counts = UsageCounts(prompt=line.prompt_eval_count, completion=line.eval_count)
        out = completion_body(
            f"chatcmpl-{req.id}", int(req.arrived_wall), req.model,
            content=message.content if message.content or not calls else None,
            reasoning=message.thinking or None, tool_calls=calls, finish_reason=finish, usage=counts,
        )
        return NonStreamResult(body=out, usage=counts.as_usage(), finish_reason=finish)
