"""Google Gemini (generativelanguage `v1beta`) behind OpenAI chat completions.

Request: `streamGenerateContent?alt=sse` (stream) or `generateContent`; key in `x-goog-api-key`. System messages ->
`systemInstruction`; assistant -> role `model` with `functionCall` parts; tool results -> `functionResponse` parts
(the function name is looked up from the assistant call with that id; a result that is a JSON object is sent as
is, anything else as {"result": ...}). Images and files: base64 data URLs -> `inlineData`, http(s) URLs ->
`fileData`. Sampling options -> `generationConfig` (max tokens, temperature, top_p, stop, seed, presence and
frequency penalties, JSON mode / schema via `responseJsonSchema`); `reasoning_effort` -> `thinkingConfig`
(budget, thoughts included). Tool parameters go as `parametersJsonSchema` (full JSON Schema).

Stream: the body may be SSE or, when the server ignores `alt=sse`, one streamed JSON array; the codec tells them
apart by the first byte. Text parts -> content, thought parts -> `reasoning_content`, function calls arrive whole ->
one tool-call delta each (id `call_<request id>_<n>` unless Gemini gives one; a thought signature rides along as
`extra_content.google.thought_signature` and is sent back from assistant tool calls). Usage: promptTokenCount;
completion = candidates + thoughts tokens. Gemini has no end event: [DONE] goes out at EOF after a finishReason.
Code execution, grounding and inline output data are not forwarded.
"""

from __future__ import annotations

import urllib.parse
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
    DocumentPart,
    ImagePart,
    Part,
    TextPart,
    bad_request,
    parse_chat,
    require_chat,
    tool_result_object,
)
from sluicegate.providers.openai_chunks import ToolCallOut, UsageCounts, completion_body
from sluicegate.providers.sse_data import SSEDataReader
from sluicegate.providers.translating_codec import TranslatingCodec, event_error_status
from sluicegate.providers.upstream_errors import error_fields, json_or_none, malformed_response, provider_error
from sluicegate.types import GatewayError, GatewayRequest
from sluicegate.wire.errors import CorruptFrame, WireError
from sluicegate.wire.json_array import JSONArraySplitter

FINISH_REASONS: Final = {
    "STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter", "LANGUAGE": "stop", "OTHER": "stop", "MALFORMED_FUNCTION_CALL": "stop",
}
THINKING_BUDGETS: Final = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}

_encode = msgspec.json.Encoder().encode


# --- request ----------------------------------------------------------------------------------------------------
def _part(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    if isinstance(part, DocumentPart):
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    assert isinstance(part, ImagePart)
    return {"fileData": {"mimeType": part.media_type or "image/jpeg", "fileUri": part.url}}


def _signature(extra: dict[str, Any]) -> str | None:
    google = extra.get("extra_content", {}).get("google")
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) else None


def _contents(chat: ChatRequest) -> list[dict[str, Any]]:
    names = chat.tool_names_by_id()
    contents: list[dict[str, Any]] = []
    for turn in chat.turns:
        if turn.role == "system":
            continue
        parts: list[dict[str, Any]]
        if turn.role == "tool":
            role = "user"
            name = names.get(turn.tool_call_id or "")
            if name is None:
                raise bad_request(f"Tool result {turn.tool_call_id!r} answers no tool call of an earlier assistant "
                                  "message (gemini needs the function name).", param="messages")
            parts = [{"functionResponse": {"name": name, "response": tool_result_object(turn.text())}}]
        else:
            role = "model" if turn.role == "assistant" else "user"
            parts = [_part(p) for p in turn.parts if not (isinstance(p, TextPart) and not p.text)]
            for call in turn.tool_calls:
                item: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.parsed_arguments()}}
                signature = _signature(call.extra)
                if signature is not None:
                    item["thoughtSignature"] = signature
                parts.append(item)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return contents


def _generation_config(chat: ChatRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if chat.max_tokens is not None:
        config["maxOutputTokens"] = chat.max_tokens
    if chat.temperature is not None:
        config["temperature"] = chat.temperature
    if chat.top_p is not None:
        config["topP"] = chat.top_p
    if chat.stop:
        config["stopSequences"] = chat.stop
    if chat.seed is not None:
        config["seed"] = chat.seed
    if chat.presence_penalty is not None:
        config["presencePenalty"] = chat.presence_penalty
    if chat.frequency_penalty is not None:
        config["frequencyPenalty"] = chat.frequency_penalty
    if chat.response_format is not None:
        config["responseMimeType"] = "application/json"
        if chat.json_schema is not None:
            config["responseJsonSchema"] = chat.json_schema
    budget = THINKING_BUDGETS.get(chat.reasoning_effort or "")
    if budget is not None:
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
    return config


def generate_body(chat: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": _contents(chat)}
    system = [{"text": text} for text in chat.system_text() if text]
    if system:
        body["systemInstruction"] = {"parts": system}
    config = _generation_config(chat)
    if config:
        body["generationConfig"] = config
    if chat.tools:
        body["tools"] = [{"functionDeclarations": [
            {"name": t.name, **({"description": t.description} if t.description else {}),
             "parametersJsonSchema": t.parameters}
            for t in chat.tools
        ]}]
        if chat.tool_choice is not None:
            mode = {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}[chat.tool_choice]
            calling: dict[str, Any] = {"mode": mode}
            if chat.tool_choice_name is not None:
                calling["allowedFunctionNames"] = [chat.tool_choice_name]
            body["toolConfig"] = {"functionCallingConfig": calling}
    return body


# --- stream -----------------------------------------------------------------------------------------------------
class _FunctionCall(msgspec.Struct):
    name: str = ""
    args: msgspec.Raw = msgspec.Raw()  # empty: absent
    id: str | None = None


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool | None = None
    function_call: _FunctionCall | None = None
    thought_signature: str | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None
    index: int | None = None


class _UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None
    thoughts_token_count: int | None = None
    cached_content_token_count: int | None = None


class _PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _Error(msgspec.Struct):
    code: int | None = None
    message: str | None = None
    status: str | None = None


class _Response(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] = []
    usage_metadata: _UsageMetadata | None = None
    prompt_feedback: _PromptFeedback | None = None
    response_id: str | None = None
    error: _Error | None = None


_decode_response = msgspec.json.Decoder(_Response).decode


def _counts(meta: _UsageMetadata, counts: UsageCounts) -> None:
    if meta.prompt_token_count is not None:
        counts.prompt = meta.prompt_token_count
    if meta.candidates_token_count is not None or meta.thoughts_token_count is not None:
        counts.completion = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    if meta.thoughts_token_count is not None:
        counts.reasoning = meta.thoughts_token_count
    if meta.cached_content_token_count is not None:
        counts.cached = meta.cached_content_token_count


def stream_error(error: _Error) -> UpstreamEventError:
    kind = error.status or (str(error.code) if error.code is not None else None)
    return UpstreamEventError(error.message or "upstream error", code=kind, type="upstream_error",
                              status=event_error_status(kind, error.code))


def _call_extra(signature: str | None) -> dict[str, Any] | None:
    return {"extra_content": {"google": {"thought_signature": signature}}} if signature else None


class GeminiCodec(TranslatingCodec):
    __slots__ = ("_array", "_call_prefix", "_finish", "_head", "_max", "_sse", "_tools")

    provider = "gemini"

    def __init__(self, req: GatewayRequest, max_event_bytes: int) -> None:
        super().__init__(req)
        self._sse: SSEDataReader | None = None
        self._array: JSONArraySplitter | None = None
        self._head = b""  # bytes before the first one that tells SSE from a JSON array
        self._max = max_event_bytes
        self._tools = 0
        self._call_prefix = f"call_{req.id}_"
        # Some Gemini versions put a finishReason on every chunk: the finish chunk waits for the end of the body.
        self._finish: str | None = None

    def _frames(self, data: bytes) -> list[bytes]:
        if self._sse is not None:
            return self._sse.feed(data)
        if self._array is not None:
            return self._array.feed(data)
        head = self._head + data
        start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        if not start:
            self._head = head
            return []
        self._head = b""
        if start == b"[":
            self._array = JSONArraySplitter(self._max)
            return self._array.feed(head)
        self._sse = SSEDataReader(self._max)
        return self._sse.feed(head)

    def _translate(self, data: bytes, out: list[bytes]) -> None:
        for frame in self._frames(data):
            self._response(frame, out)
            if self._ended:
                return

    def _translate_tail(self, out: list[bytes]) -> None:
        if self._sse is not None:
            for frame in self._sse.flush():
                self._response(frame, out)
                if self._ended:
                    return
        elif self._array is not None:
            try:
                self._array.finish()
            except WireError:
                self._stopped = False  # the array's ']' is its end; a finishReason alone does not end it
                return
        if self._stopped and self._finish is not None:
            reason = self._finish
            self._stop(out, "tool_calls" if reason == "stop" and self._tools else reason)

    def _response(self, frame: bytes, out: list[bytes]) -> None:
        try:
            response = _decode_response(frame)
        except msgspec.DecodeError as exc:
            raise CorruptFrame(f"gemini response chunk is not valid: {exc}") from None
        self._events += 1
        if response.error is not None:
            self._fail(stream_error(response.error), out)
            return
        if self._chunk_id is None:
            self._chunk_id = response.response_id
        if response.usage_metadata is not None:
            _counts(response.usage_metadata, self.counts)
            self._counted()
        for candidate in response.candidates:
            if candidate.index:
                continue  # n > 1 is refused at request time
            if candidate.content is not None:
                for part in candidate.content.parts:
                    self._part(part, out)
            if candidate.finish_reason is not None:
                self._finish = FINISH_REASONS.get(candidate.finish_reason, "stop")
                self._stopped = True
        if not response.candidates and response.prompt_feedback is not None and response.prompt_feedback.block_reason:
            self._finish = "content_filter"
            self._stopped = True

    def _part(self, part: _Part, out: list[bytes]) -> None:
        if part.text:
            chunks = self._open(out)
            out.append(chunks.reasoning(part.text) if part.thought else chunks.content(part.text))
        elif part.function_call is not None:
            call = part.function_call
            arguments = bytes(call.args).decode() or "{}"
            index = self._tools
            self._tools += 1
            out.append(self._open(out).tool_call(index, call.id or f"{self._call_prefix}{index}", call.name,
                                                 arguments, _call_extra(part.thought_signature)))


class GeminiAdapter(NothingToPrepare):
    name = "gemini"

    def build_request(self, req: GatewayRequest, deployment: DeploymentConfig, upstream_model: str) -> UpstreamRequest:
        require_chat(req, self.name)
        assert deployment.api_base is not None
        chat = parse_chat(req.body, self.name, deployment.forward_fields)
        body = generate_body(chat)
        for key in deployment.forward_fields:
            if key in req.body:
                body[key] = req.body[key]
        model = urllib.parse.quote(upstream_model.removeprefix("models/"), safe="")
        method = "streamGenerateContent?alt=sse" if req.stream else "generateContent"
        secret = deployment.api_key
        headers = upstream_headers(req, deployment, {"x-goog-api-key": secret.get_secret_value()} if secret else {})
        return UpstreamRequest(f"{deployment.api_base}/models/{model}:{method}", headers, _encode(body))

    def stream_codec(self, req: GatewayRequest, max_event_bytes: int) -> GeminiCodec:
        return GeminiCodec(req, max_event_bytes)

    def error_from_response(self, status: int, body: bytes, retry_after: float | None) -> GatewayError:
        obj = json_or_none(body)
        if isinstance(obj, list) and obj:  # the JSON-array form wraps errors too
            obj = obj[0]
        message, code = error_fields(obj, "status")
        return provider_error(self.name, status, status, message, code, retry_after, body)

    def nonstream_result(self, req: GatewayRequest, body: bytes) -> NonStreamResult:
        try:
            response = _decode_response(body)
        except msgspec.DecodeError:
            raise malformed_response("gemini", "a GenerateContentResponse") from None
        text: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCallOut] = []
        finish: str | None = None
        for candidate in response.candidates:
            if candidate.index:
                continue
            for part in candidate.content.parts if candidate.content is not None else []:
                if part.text:
                    (thoughts if part.thought else text).append(part.text)
                elif part.function_call is not None:
                    call = part.function_call
                    extra = _call_extra(part.thought_signature) or {}
                    calls.append(ToolCallOut(call.id or f"call_{req.id}_{len(calls)}", call.name,
                                             bytes(call.args).decode() or "{}", extra))
            if candidate.finish_reason is not None:
                finish = FINISH_REASONS.get(candidate.finish_reason, "stop")
        if finish == "stop" and calls:
            finish = "tool_calls"
        if not response.candidates and response.prompt_feedback is not None and response.prompt_feedback.block_reason:
            finish = "content_filter"
        counts = UsageCounts()
        if response.usage_metadata is not None:
            _counts(response.usage_metadata, counts)
        out = completion_body(
            response.response_id or f"chatcmpl-{req.id}", int(req.arrived_wall), req.model,
            content="".join(text) if text or not calls else None, reasoning="".join(thoughts) or None,
            tool_calls=calls, finish_reason=finish, usage=counts,
        )
        return NonStreamResult(body=out, usage=counts.as_usage(), finish_reason=finish)
