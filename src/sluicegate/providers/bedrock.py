"""AWS Bedrock Converse / ConverseStream behind OpenAI chat completions, signed with SigV4.

Request: `POST {api_base}/model/{model id}/converse-stream` (or `/converse`); system messages -> `system`, tool
results -> `toolResult` blocks in a user turn, assistant tool calls -> `toolUse` blocks, consecutive turns of one
role merged; images and documents only as base64 data URLs (Bedrock does not fetch URLs). max tokens,
temperature, top_p and stop -> `inferenceConfig`; tools -> `toolConfig` (tool_choice none: tools are left out).
Dropped: seed, presence_penalty, frequency_penalty. Refused: response_format json_*, reasoning_effort (pass
`additionalModelRequestFields` through `forward_fields` for model-specific options).

Stream (AWS event stream): text deltas -> content, reasoningContent text -> `reasoning_content`, toolUse blocks ->
tool-call deltas (server-side tools such as Nova's code interpreter are not forwarded), messageStop -> the finish
chunk, metadata -> usage (input with cache reads and writes counted in) and [DONE]. Exception frames map to
statuses: throttlingException 429, serviceUnavailableException 503, modelTimeoutException 504,
validationException 400, internalServerException and modelStreamErrorException 502.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Final

import msgspec

from sluicegate.config.schema import DeploymentConfig
from sluicegate.providers.aws_sigv4 import SigV4Signer, bedrock_region
from sluicegate.providers.base import NonStreamResult, UpstreamEventError, UpstreamRequest
from sluicegate.providers.chat_request import (
    ChatRequest,
    DocumentPart,
    ImagePart,
    Part,
    TextPart,
    bad_request,
    parse_chat,
    require_chat,
    unsupported,
)
from sluicegate.providers.openai_chunks import ToolCallOut, UsageCounts, completion_body
from sluicegate.providers.translating_codec import TranslatingCodec
from sluicegate.providers.upstream_errors import json_or_none, malformed_response, provider_error
from sluicegate.types import GatewayError, GatewayRequest
from sluicegate.wire.aws_eventstream import EventStreamDecoder, EventStreamMessage
from sluicegate.wire.errors import CorruptFrame

FINISH_REASONS: Final = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "guardrail_intervened": "content_filter", "content_filtered": "content_filter",
}
# Exception frames: the status a client gets when one is the first event.
EXCEPTION_STATUS: Final = {
    "throttlingException": 429, "serviceUnavailableException": 503, "modelTimeoutException": 504,
    "validationException": 400, "internalServerException": 502, "modelStreamErrorException": 502,
}
# HTTP error answers carry only {"message"} (the type is in a header): name the error by its status.
_ERROR_CODES: Final = {
    400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
    408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
    500: "InternalServerException", 503: "ServiceUnavailableException",
}
_IMAGE_FORMATS: Final = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                         "image/webp": "webp"}
_DOCUMENT_FORMATS: Final = {
    "application/pdf": "pdf", "text/csv": "csv", "application/msword": "doc", "text/html": "html",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls", "text/plain": "txt", "text/markdown": "md",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
}

_encode = msgspec.json.Encoder().encode


# --- request ----------------------------------------------------------------------------------------------------
def _block(part: Part, index: int) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    if isinstance(part, ImagePart):
        image_format = _IMAGE_FORMATS.get(part.media_type or "")
        if part.data is None or image_format is None:
            raise bad_request("Provider bedrock takes images only as base64 data URLs of png, jpeg, gif or webp.",
                              param="messages", code="unsupported_parameter")
        return {"image": {"format": image_format, "source": {"bytes": part.data}}}
    assert isinstance(part, DocumentPart)
    document_format = _DOCUMENT_FORMATS.get(part.media_type)
    if document_format is None:
        raise bad_request(f"Files of type {part.media_type} are not supported for provider bedrock.",
                          param="messages", code="unsupported_parameter")
    name = part.filename.rsplit(".", 1)[0] if part.filename else f"document {index}"
    return {"document": {"format": document_format, "name": name, "source": {"bytes": part.data}}}


def _messages(chat: ChatRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    documents = 0
    for turn in chat.turns:
        if turn.role == "system":
            continue
        blocks: list[dict[str, Any]] = []
        if turn.role == "tool":
            role = "user"
            blocks.append({"toolResult": {"toolUseId": turn.tool_call_id, "content": [{"text": turn.text()}]}})
        else:
            role = turn.role
            for part in turn.parts:
                if isinstance(part, TextPart) and not part.text:
                    continue
                documents += isinstance(part, DocumentPart)
                blocks.append(_block(part, documents))
            blocks += [{"toolUse": {"toolUseId": c.id, "name": c.name, "input": c.parsed_arguments()}}
                       for c in turn.tool_calls]
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return messages


def converse_body(chat: ChatRequest) -> dict[str, Any]:
    if chat.response_format is not None:
        raise unsupported("bedrock", "response_format", f"response_format {chat.response_format}")
    if chat.reasoning_effort is not None:
        raise unsupported("bedrock", "reasoning_effort")
    messages = _messages(chat)
    body: dict[str, Any] = {"messages": messages}
    system = [{"text": text} for text in chat.system_text() if text]
    if system:
        body["system"] = system
    config: dict[str, Any] = {}
    if chat.max_tokens is not None:
        config["maxTokens"] = chat.max_tokens
    if chat.temperature is not None:
        config["temperature"] = chat.temperature
    if chat.top_p is not None:
        config["topP"] = chat.top_p
    if chat.stop:
        config["stopSequences"] = chat.stop
    if config:
        body["inferenceConfig"] = config
    uses_tools = any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])
    if chat.tools and (chat.tool_choice != "none" or uses_tools):
        tool_config: dict[str, Any] = {"tools": [
            {"toolSpec": {"name": t.name, **({"description": t.description} if t.description else {}),
                          "inputSchema": {"json": t.parameters}}}
            for t in chat.tools
        ]}
        if chat.tool_choice == "required":
            tool_config["toolChoice"] = {"any": {}}
        elif chat.tool_choice == "function":
            tool_config["toolChoice"] = {"tool": {"name": chat.tool_choice_name}}
        elif chat.tool_choice == "auto":
            tool_config["toolChoice"] = {"auto": {}}
        body["toolConfig"] = tool_config
    return body


# --- stream -----------------------------------------------------------------------------------------------------
class _ToolUseStart(msgspec.Struct, rename="camel"):
    tool_use_id: str = ""
    name: str = ""
    type: str | None = None


class _Start(msgspec.Struct, rename="camel"):
    tool_use: _ToolUseStart | None = None


class _ToolUseDelta(msgspec.Struct):
    input: str = ""


class _ReasoningDelta(msgspec.Struct):
    text: str | None = None


class _Delta(msgspec.Struct, rename="camel"):
    text: str | None = None
    tool_use: _ToolUseDelta | None = None
    reasoning_content: _ReasoningDelta | None = None


class _Usage(msgspec.Struct, rename="camel"):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_write_input_tokens: int | None = None


class _Event(msgspec.Struct, rename="camel"):
    """Every ConverseStream event payload in one flat shape (the event type is in a header)."""

    content_block_index: int | None = None
    start: _Start | None = None
    delta: _Delta | None = None
    stop_reason: str | None = None
    usage: _Usage | None = None
    message: str | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


def _count(usage: _Usage, counts: UsageCounts) -> None:
    if usage.input_tokens is not None:
        counts.prompt = usage.input_tokens + (usage.cache_read_input_tokens or 0) + (
            usage.cache_write_input_tokens or 0)
        if usage.cache_read_input_tokens is not None:
            counts.cached = usage.cache_read_input_tokens
    if usage.output_tokens is not None:
        counts.completion = usage.output_tokens


class BedrockCodec(TranslatingCodec):
    __slots__ = ("_decoder", "_tools")

    provider = "bedrock"

    def __init__(self, req: GatewayRequest, max_event_bytes: int) -> None:
        super().__init__(req)
        self._decoder = EventStreamDecoder(max(max_event_bytes, 1024))
        self._tools: dict[int, int] = {}  # contentBlockIndex -> OpenAI tool call index

    def _translate(self, data: bytes, out: list[bytes]) -> None:
        for message in self._decoder.feed(data):
            self._message(message, out)
            if self._ended:
                return

    def _translate_tail(self, out: list[bytes]) -> None:
        self._decoder.finish()

    def _message(self, message: EventStreamMessage, out: list[bytes]) -> None:
        self._events += 1
        kind = message.message_type
        if kind == "exception":
            self._exception(message, out)
            return
        if kind == "error":
            code = message.headers.get(":error-code")
            text = message.headers.get(":error-message")
            self._fail(UpstreamEventError(text if isinstance(text, str) else "upstream error",
                                          code=code if isinstance(code, str) else None, type="upstream_error"), out)
            return
        try:
            event = _decode_event(message.payload)
        except msgspec.DecodeError as exc:
            raise CorruptFrame(f"bedrock event is not valid: {exc}") from None
        name = message.event_type
        if name == "contentBlockDelta":
            delta = event.delta
            if delta is None:
                return
            if delta.text:
                out.append(self._open(out).content(delta.text))
            elif delta.tool_use is not None:
                tool = self._tools.get(event.content_block_index if event.content_block_index is not None else -1)
                if tool is not None and delta.tool_use.input:
                    out.append(self._open(out).tool_arguments(tool, delta.tool_use.input))
            elif delta.reasoning_content is not None and delta.reasoning_content.text:
                out.append(self._open(out).reasoning(delta.reasoning_content.text))
        elif name == "contentBlockStart":
            start = event.start.tool_use if event.start is not None else None
            if start is not None and start.type in (None, "tool_use"):
                index = len(self._tools)
                self._tools[event.content_block_index if event.content_block_index is not None else -1] = index
                out.append(self._open(out).tool_call(index, start.tool_use_id, start.name))
        elif name == "messageStop":
            self._stop(out, FINISH_REASONS.get(event.stop_reason or "", "stop"))
        elif name == "metadata":
            if event.usage is not None:
                _count(event.usage, self.counts)
                self._counted()
            if self._stopped:
                self._end(out)
        # messageStart, contentBlockStop and newer event types carry nothing for the client.

    def _exception(self, message: EventStreamMessage, out: list[bytes]) -> None:
        name = message.exception_type or "exception"
        try:
            text = _decode_event(message.payload).message
        except msgspec.DecodeError:
            text = None
        self._fail(UpstreamEventError(text or name, code=name, type="upstream_error",
                                      status=EXCEPTION_STATUS.get(name, 502)), out)


# --- non-stream -------------------------------------------------------------------------------------------------
class _ToolUse(msgspec.Struct, rename="camel"):
    tool_use_id: str = ""
    name: str = ""
    input: msgspec.Raw = msgspec.Raw()


class _ReasoningText(msgspec.Struct):
    text: str | None = None


class _Reasoning(msgspec.Struct, rename="camel"):
    reasoning_text: _ReasoningText | None = None


class _Block(msgspec.Struct, rename="camel"):
    text: str | None = None
    tool_use: _ToolUse | None = None
    reasoning_content: _Reasoning | None = None


class _OutputMessage(msgspec.Struct):
    content: list[_Block] = []


class _Output(msgspec.Struct):
    message: _OutputMessage | None = None


class _Response(msgspec.Struct, rename="camel"):
    output: _Output | None = None
    stop_reason: str | None = None
    usage: _Usage | None = None


_decode_response = msgspec.json.Decoder(_Response).decode


class BedrockAdapter:
    name = "bedrock"

    def __init__(self) -> None:
        self._signer = SigV4Signer("bedrock")

    async def prepare(self) -> None:
        await self._signer.ready()  # the credential lookup runs in a thread, never on the event loop

    def build_request(self, req: GatewayRequest, deployment: DeploymentConfig, upstream_model: str) -> UpstreamRequest:
        require_chat(req, self.name)
        assert deployment.api_base is not None
        chat = parse_chat(req.body, self.name, deployment.forward_fields)
        body = converse_body(chat)
        for key in deployment.forward_fields:
            if key in req.body:
                body[key] = req.body[key]
        model = urllib.parse.quote(upstream_model, safe="")
        url = f"{deployment.api_base}/model/{model}/{'converse-stream' if req.stream else 'converse'}"
        payload = _encode(body)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/vnd.amazon.eventstream" if req.stream else "application/json",
            "X-Request-Id": req.id,
            **deployment.headers,
        }
        signed = self._signer.sign(url, headers, payload, bedrock_region(deployment.region, deployment.api_base))
        signed["Accept-Encoding"] = "identity"  # not signed (added after): stream bytes are read as they were sent
        return UpstreamRequest(url, signed, payload)

    def stream_codec(self, req: GatewayRequest, max_event_bytes: int) -> BedrockCodec:
        return BedrockCodec(req, max_event_bytes)

    def error_from_response(self, status: int, body: bytes, retry_after: float | None) -> GatewayError:
        obj = json_or_none(body)
        message = code = None
        if isinstance(obj, dict):
            message = obj.get("message") or obj.get("Message")
            message = message if isinstance(message, str) else None
            kind = obj.get("__type")
            code = kind.rsplit("#", 1)[-1] if isinstance(kind, str) else None
        client_status = 502 if status == 424 else status  # 424: the model itself failed
        return provider_error(self.name, status, client_status, message, code or _ERROR_CODES.get(status),
                              retry_after, body)

    def nonstream_result(self, req: GatewayRequest, body: bytes) -> NonStreamResult:
        try:
            response = _decode_response(body)
        except msgspec.DecodeError:
            raise malformed_response("bedrock", "a Converse response") from None
        text: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCallOut] = []
        message = response.output.message if response.output is not None else None
        for block in message.content if message is not None else []:
            if block.text:
                text.append(block.text)
            elif block.tool_use is not None:
                use = block.tool_use
                calls.append(ToolCallOut(use.tool_use_id, use.name, bytes(use.input).decode() or "{}"))
            elif block.reasoning_content is not None and block.reasoning_content.reasoning_text is not None:
                thinking.append(block.reasoning_content.reasoning_text.text or "")
        counts = UsageCounts()
        if response.usage is not None:
            _count(response.usage, counts)
        finish = FINISH_REASONS.get(response.stop_reason, "stop") if response.stop_reason else None
        out = completion_body(
            f"chatcmpl-{req.id}", int(req.arrived_wall), req.model,
            content="".join(text) if text or not calls else None, reasoning="".join(thinking) or None,
            tool_calls=calls, finish_reason=finish, usage=counts,
        )
        return NonStreamResult(body=out, usage=counts.as_usage(), finish_reason=finish)
