"""Anthropic Messages API behind OpenAI chat completions.

Request: system/developer messages -> `system`; tool results (role tool) -> `tool_result` blocks in a user turn;
assistant tool calls -> `tool_use` blocks; consecutive turns of one role are merged; images by URL or base64;
PDF files by base64. `max_tokens` is required by Anthropic: `max_completion_tokens`, else `max_tokens`, else 4096.
`reasoning_effort` -> extended thinking with a token budget. Dropped (no Anthropic equivalent): seed,
presence_penalty, frequency_penalty. Refused: response_format json_*.

Stream: text deltas -> `delta.content`; thinking deltas -> `delta.reasoning_content`; tool_use blocks -> tool-call
deltas (index counts tool blocks only); stop_reason -> finish_reason; usage from message_start (input, with cache
reads and writes counted in) and message_delta (cumulative output). Server tools (web search, code execution) and
their results, citations and thinking signatures are not forwarded.
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
    upstream_headers,
)
from sluicegate.providers.chat_request import (
    ChatRequest,
    ImagePart,
    Part,
    TextPart,
    bad_request,
    parse_chat,
    require_chat,
    unsupported,
)
from sluicegate.providers.openai_chunks import ToolCallOut, UsageCounts, completion_body
from sluicegate.providers.sse_data import SSEDataReader
from sluicegate.providers.translating_codec import TranslatingCodec, event_error_status
from sluicegate.providers.upstream_errors import error_fields, json_or_none, malformed_response, provider_error
from sluicegate.types import GatewayError, GatewayRequest
from sluicegate.wire.errors import CorruptFrame

DEFAULT_VERSION: Final = "2023-06-01"
DEFAULT_MAX_TOKENS: Final = 4096
THINKING_BUDGETS: Final = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}

FINISH_REASONS: Final = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}

_encode = msgspec.json.Encoder().encode


# --- request ----------------------------------------------------------------------------------------------------
def _block(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        if part.data is not None:
            return {"type": "image", "source": {"type": "base64", "media_type": part.media_type, "data": part.data}}
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    if part.media_type != "application/pdf":
        raise bad_request(f"File parts of type {part.media_type} are not supported for provider anthropic "
                          "(application/pdf is).", param="messages", code="unsupported_parameter")
    return {"type": "document", "source": {"type": "base64", "media_type": part.media_type, "data": part.data}}


def _messages(chat: ChatRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn in chat.turns:
        if turn.role == "system":
            continue
        if turn.role == "tool":
            role = "user"
            blocks: list[dict[str, Any]] = [
                {"type": "tool_result", "tool_use_id": turn.tool_call_id, "content": turn.text()}]
        else:
            role = turn.role
            blocks = [_block(p) for p in turn.parts if not (isinstance(p, TextPart) and not p.text)]
            blocks += [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.parsed_arguments()}
                       for call in turn.tool_calls]
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return messages


def _tool_choice(chat: ChatRequest) -> dict[str, Any] | None:
    choice: dict[str, Any] | None
    if chat.tool_choice == "required":
        choice = {"type": "any"}
    elif chat.tool_choice == "function":
        choice = {"type": "tool", "name": chat.tool_choice_name}
    elif chat.tool_choice in ("auto", "none"):
        choice = {"type": chat.tool_choice}
    else:
        choice = None
    if chat.parallel_tool_calls is False and chat.tools and chat.tool_choice != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return choice


def messages_body(chat: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    if chat.response_format is not None:
        raise unsupported("anthropic", "response_format", f"response_format {chat.response_format}")
    body: dict[str, Any] = {"model": model, "messages": _messages(chat)}
    max_tokens = chat.max_tokens if chat.max_tokens is not None else DEFAULT_MAX_TOKENS
    budget = THINKING_BUDGETS.get(chat.reasoning_effort or "")
    if budget is not None:
        if chat.max_tokens is None:
            max_tokens = budget + DEFAULT_MAX_TOKENS
        elif budget >= max_tokens:
            budget = max_tokens - 1 if max_tokens > THINKING_BUDGETS["minimal"] else None
        if budget is not None:
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    body["max_tokens"] = max_tokens
    system = [{"type": "text", "text": text} for text in chat.system_text() if text]
    if system:
        body["system"] = system
    if chat.stop:
        body["stop_sequences"] = chat.stop
    if chat.temperature is not None:
        body["temperature"] = chat.temperature
    if chat.top_p is not None:
        body["top_p"] = chat.top_p
    if chat.tools:
        body["tools"] = [
            {"name": t.name, **({"description": t.description} if t.description else {}), "input_schema": t.parameters}
            for t in chat.tools
        ]
    choice = _tool_choice(chat)
    if choice is not None and chat.tools:
        body["tool_choice"] = choice
    if chat.user is not None:
        body["metadata"] = {"user_id": chat.user}
    if stream:
        body["stream"] = True
    return body


# --- stream -----------------------------------------------------------------------------------------------------
class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Message(msgspec.Struct):
    id: str | None = None
    usage: _Usage | None = None


class _Block(msgspec.Struct):
    type: str = ""
    id: str | None = None
    name: str | None = None
    text: str | None = None
    thinking: str | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None


class _Error(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class _Event(msgspec.Struct):
    """Every stream event in one flat shape: unknown event types and fields decode and are ignored."""

    type: str = ""
    index: int | None = None
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _Error | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


def _prompt_tokens(usage: _Usage) -> int | None:
    if usage.input_tokens is None:
        return None
    return usage.input_tokens + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)


def stream_error(error: _Error | None) -> UpstreamEventError:
    kind = error.type if error is not None else None
    message = (error.message if error is not None else None) or "upstream error event"
    return UpstreamEventError(message, code=kind, type=kind, status=event_error_status(kind))


class AnthropicCodec(TranslatingCodec):
    __slots__ = ("_reader", "_tools")

    provider = "anthropic"

    def __init__(self, req: GatewayRequest, max_event_bytes: int) -> None:
        super().__init__(req)
        self._reader = SSEDataReader(max_event_bytes)
        self._tools: dict[int, int] = {}  # content block index -> OpenAI tool call index

    def _translate(self, data: bytes, out: list[bytes]) -> None:
        for payload in self._reader.feed(data):
            self._event(payload, out)
            if self._ended:
                return

    def _translate_tail(self, out: list[bytes]) -> None:
        for payload in self._reader.flush():
            self._event(payload, out)
            if self._ended:
                return

    def _event(self, payload: bytes, out: list[bytes]) -> None:
        try:
            event = _decode_event(payload)
        except msgspec.DecodeError as exc:
            raise CorruptFrame(f"anthropic event is not valid: {exc}") from None
        self._events += 1
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            if delta is None:
                return
            if delta.text:
                out.append(self._open(out).content(delta.text))
            elif delta.partial_json:
                tool = self._tools.get(event.index if event.index is not None else -1)
                if tool is not None:
                    out.append(self._open(out).tool_arguments(tool, delta.partial_json))
            elif delta.thinking:
                out.append(self._open(out).reasoning(delta.thinking))
        elif kind == "content_block_start":
            self._block_start(event, out)
        elif kind == "message_start":
            message = event.message
            if message is not None:
                self._chunk_id = message.id
                if message.usage is not None:
                    self._count(message.usage)
        elif kind == "message_delta":
            if event.usage is not None:
                self._count(event.usage)
            reason = event.delta.stop_reason if event.delta is not None else None
            if reason is not None:
                self._stop(out, FINISH_REASONS.get(reason, "stop"))
        elif kind == "message_stop":
            self._stopped = True
            self._end(out)
        elif kind == "error":
            self._fail(stream_error(event.error), out)
        # ping, content_block_stop and event types added later carry nothing for the client.

    def _block_start(self, event: _Event, out: list[bytes]) -> None:
        block = event.content_block
        if block is None:
            return
        if block.type == "tool_use":
            index = len(self._tools)
            self._tools[event.index if event.index is not None else -1] = index
            out.append(self._open(out).tool_call(index, block.id or "", block.name or ""))
        elif block.type == "text" and block.text:
            out.append(self._open(out).content(block.text))
        elif block.type == "thinking" and block.thinking:
            out.append(self._open(out).reasoning(block.thinking))

    def _count(self, usage: _Usage) -> None:
        prompt = _prompt_tokens(usage)
        if prompt is not None:
            self.counts.prompt = prompt
            if usage.cache_read_input_tokens is not None:
                self.counts.cached = usage.cache_read_input_tokens
        if usage.output_tokens is not None:
            self.counts.completion = usage.output_tokens
        self._counted()


# --- non-stream -------------------------------------------------------------------------------------------------
class _ContentBlock(msgspec.Struct):
    type: str = ""
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw = msgspec.Raw()  # empty: absent


class _Response(msgspec.Struct):
    id: str | None = None
    content: list[_ContentBlock] = []
    stop_reason: str | None = None
    usage: _Usage | None = None


_decode_response = msgspec.json.Decoder(_Response).decode


class AnthropicAdapter(NothingToPrepare):
    name = "anthropic"

    def build_request(self, req: GatewayRequest, deployment: DeploymentConfig, upstream_model: str) -> UpstreamRequest:
        require_chat(req, self.name)
        assert deployment.api_base is not None
        chat = parse_chat(req.body, self.name, deployment.forward_fields)
        body = messages_body(chat, upstream_model, req.stream)
        for key in deployment.forward_fields:
            if key in req.body:
                body[key] = req.body[key]
        secret = deployment.api_key
        headers = upstream_headers(req, deployment, {"x-api-key": secret.get_secret_value()} if secret else {},
                                   extra={"anthropic-version": deployment.api_version or DEFAULT_VERSION})
        return UpstreamRequest(f"{deployment.api_base}/messages", headers, _encode(body))

    def stream_codec(self, req: GatewayRequest, max_event_bytes: int) -> AnthropicCodec:
        return AnthropicCodec(req, max_event_bytes)

    def error_from_response(self, status: int, body: bytes, retry_after: float | None) -> GatewayError:
        obj = json_or_none(body)
        message, code = error_fields(obj, "type")
        client_status = 503 if status == 529 else status  # 529: Anthropic's "overloaded"
        return provider_error(self.name, status, client_status, message, code, retry_after, body)

    def nonstream_result(self, req: GatewayRequest, body: bytes) -> NonStreamResult:
        try:
            response = _decode_response(body)
        except msgspec.DecodeError:
            raise malformed_response("anthropic", "a Messages response") from None
        text: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCallOut] = []
        for block in response.content:
            if block.type == "text" and block.text:
                text.append(block.text)
            elif block.type == "thinking" and block.thinking:
                thinking.append(block.thinking)
            elif block.type == "tool_use":
                arguments = bytes(block.input).decode() or "{}"
                calls.append(ToolCallOut(block.id or "", block.name or "", arguments))
        counts = UsageCounts()
        if response.usage is not None:
            counts.prompt = _prompt_tokens(response.usage)
            counts.completion = response.usage.output_tokens
            counts.cached = response.usage.cache_read_input_tokens
        finish = FINISH_REASONS.get(response.stop_reason, "stop") if response.stop_reason else None
        out = completion_body(
            response.id or f"chatcmpl-{req.id}", int(req.arrived_wall), req.model,
            content="".join(text) if text or not calls else None, reasoning="".join(thinking) or None,
            tool_calls=calls, finish_reason=finish, usage=counts,
        )
        return NonStreamResult(body=out, usage=counts.as_usage(), finish_reason=finish)
