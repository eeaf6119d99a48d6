"""An OpenAI chat-completions request read once into a provider-neutral form, for the translating adapters.

Every field is either used, dropped because dropping it cannot change the answer's meaning (`HARMLESS`), or
refused with a 400 that names it: a translation must never silently ignore something the client relies on.
Keys listed in a deployment's `forward_fields` are not read here; the adapter copies them into its request as is.
"""

from __future__ import annotations

import binascii
import mimetypes
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from sluicegate.types import Endpoint, GatewayError, GatewayRequest, Outcome

# Fields read by `parse_chat`; what each provider makes of them is in its adapter.
READ: Final = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "stop", "temperature",
    "top_p", "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort", "user", "seed",
    "presence_penalty", "frequency_penalty", "n", "logprobs", "top_logprobs", "modalities", "logit_bias",
})
# Dropped: bookkeeping for OpenAI's own platform or latency hints, with no effect on the answer.
HARMLESS: Final = frozenset({"store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier",
                             "prediction", "verbosity"})

_json_decode = msgspec.json.Decoder()


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, type="invalid_request_error", code=code, param=param, outcome=Outcome.INVALID)


def unsupported(provider: str, param: str, what: str | None = None) -> GatewayError:
    return bad_request(f"{what or repr(param)} is not supported for provider {provider}.", param=param,
                       code="unsupported_parameter")


def require_chat(req: GatewayRequest, provider: str) -> None:
    if req.endpoint is not Endpoint.CHAT:
        raise bad_request(f"/v1/{req.endpoint.value} is not supported for provider {provider}; "
                          "use /v1/chat/completions.", code="unsupported_endpoint")


@dataclass(slots=True)
class TextPart:
    text: str


@dataclass(slots=True)
class ImagePart:
    url: str  # as the client sent it (http(s) or data: URL)
    media_type: str | None = None  # known for data URLs, guessed from the path for http(s)
    data: str | None = None  # base64, for data URLs

    def raw_bytes(self) -> bytes:
        assert self.data is not None
        try:
            return binascii.a2b_base64(self.data)
        except (binascii.Error, ValueError):
            raise bad_request("An image data URL does not hold valid base64.", param="messages") from None


@dataclass(slots=True)
class DocumentPart:
    media_type: str
    data: str  # base64
    filename: str | None = None


Part = TextPart | ImagePart | DocumentPart


@dataclass(slots=True)
class ToolCallIn:
    """An assistant message's tool call; `arguments` is the JSON text, `extra` any provider passenger fields."""

    id: str
    name: str
    arguments: str
    extra: dict[str, Any] = field(default_factory=dict)

    def parsed_arguments(self) -> Any:
        if not self.arguments.strip():
            return {}
        try:
            return _json_decode.decode(self.arguments)
        except msgspec.DecodeError:
            raise bad_request(f"The arguments of tool call {self.id!r} are not valid JSON.",
                              param="messages") from None


@dataclass(slots=True)
class Turn:
    role: str  # system (also developer), user, assistant, tool
    parts: list[Part]
    tool_calls: list[ToolCallIn] = field(default_factory=list)
    tool_call_id: str | None = None

    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(slots=True)
class ToolSpec:
    name: str
    description: str | None
    parameters: dict[str, Any]


@dataclass(slots=True)
class ChatRequest:
    turns: list[Turn]
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str | None = None  # auto, none, required, or "function" with tool_choice_name
    tool_choice_name: str | None = None
    parallel_tool_calls: bool | None = None
    response_format: str | None = None  # json_object or json_schema (None: text)
    json_schema: dict[str, Any] | None = None
    json_schema_name: str | None = None
    reasoning_effort: str | None = None
    user: str | None = None

    def system_text(self) -> list[str]:
        return [turn.text() for turn in self.turns if turn.role == "system"]

    def tool_names_by_id(self) -> dict[str, str]:
        return {call.id: call.name for turn in self.turns for call in turn.tool_calls}


def parse_chat(body: dict[str, Any], provider: str, forward: Iterable[str] = ()) -> ChatRequest:
    forwarded = set(forward)
    for key in body:
        if key not in READ and key not in HARMLESS and key not in forwarded:
            raise unsupported(provider, key)
    if body.get("n", 1) not in (1, None):
        raise unsupported(provider, "n", "n > 1")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise unsupported(provider, "logprobs")
    if body.get("logit_bias"):
        raise unsupported(provider, "logit_bias")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise unsupported(provider, "modalities", "Output modalities other than text")
    req = ChatRequest(turns=_turns(body.get("messages")))
    req.max_tokens = _optional_int(body, "max_completion_tokens")
    if req.max_tokens is None:
        req.max_tokens = _optional_int(body, "max_tokens")
    req.stop = _stop(body.get("stop"))
    req.temperature = _optional_number(body, "temperature")
    req.top_p = _optional_number(body, "top_p")
    req.seed = _optional_int(body, "seed")
    req.presence_penalty = _optional_number(body, "presence_penalty")
    req.frequency_penalty = _optional_number(body, "frequency_penalty")
    req.tools = _tools(body.get("tools"))
    req.tool_choice, req.tool_choice_name = _tool_choice(body.get("tool_choice"))
    parallel = body.get("parallel_tool_calls")
    req.parallel_tool_calls = parallel if isinstance(parallel, bool) else None
    _response_format(body.get("response_format"), req)
    effort = body.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise bad_request("'reasoning_effort' must be a string.", param="reasoning_effort")
    req.reasoning_effort = effort
    user = body.get("user")
    req.user = user if isinstance(user, str) and user else None
    return req


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f"'{key}' must be an integer.", param=key)
    return value


def _optional_number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise bad_request(f"'{key}' must be a number.", param=key)
    return value


def _stop(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise bad_request("'stop' must be a string or a list of strings.", param="stop")


def _turns(messages: object) -> list[Turn]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list.", param="messages")
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}] must be an object.", param="messages")
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise bad_request(f"messages[{index}].role {role!r} is not supported; use system, developer, user, "
                              "assistant or tool.", param="messages")
        turn = Turn(role=role, parts=_parts(message.get("content"), index))
        if role == "assistant":
            turn.tool_calls = _tool_calls(message.get("tool_calls"), index)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad_request(f"messages[{index}] (role tool) needs a 'tool_call_id'.", param="messages")
            turn.tool_call_id = call_id
        if role in ("system", "tool") and any(not isinstance(p, TextPart) for p in turn.parts):
            raise bad_request(f"messages[{index}] (role {role}) may only hold text.", param="messages")
        turns.append(turn)
    return turns


def _parts(content: object, index: int) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    if not isinstance(content, list):
        raise bad_request(f"messages[{index}].content must be a string or a list of parts.", param="messages")
    parts: list[Part] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(TextPart(part["text"]))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append(TextPart(part["refusal"]))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise bad_request(f"messages[{index}]: an image_url part needs a url.", param="messages")
            parts.append(_image(url, index))
        elif kind == "file":
            parts.append(_document(part.get("file"), index))
        else:
            raise bad_request(f"messages[{index}]: content parts of type {kind!r} are not supported by this "
                              "provider translation (text, image_url and file with file_data are).",
                              param="messages", code="unsupported_parameter")
    return parts


def parse_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a base64 data URL, or None for anything else."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")].split(";")[0] or "application/octet-stream", data


def _image(url: str, index: int) -> ImagePart:
    parsed = parse_data_url(url)
    if parsed is not None:
        return ImagePart(url, parsed[0], parsed[1])
    if url.startswith(("http://", "https://")):
        return ImagePart(url, mimetypes.guess_type(url.split("?")[0])[0])
    raise bad_request(f"messages[{index}]: an image url must be http(s) or a base64 data URL.", param="messages")


def _document(file: object, index: int) -> DocumentPart:
    data = file.get("file_data") if isinstance(file, dict) else None
    parsed = parse_data_url(data) if isinstance(data, str) else None
    if parsed is None:
        raise bad_request(f"messages[{index}]: file parts need 'file_data' as a base64 data URL (file_id is not "
                          "supported by provider translation).", param="messages", code="unsupported_parameter")
    name = file.get("filename") if isinstance(file, dict) else None
    return DocumentPart(parsed[0], parsed[1], name if isinstance(name, str) else None)


def _tool_calls(value: object, index: int) -> list[ToolCallIn]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(f"messages[{index}].tool_calls must be a list.", param="messages")
    calls: list[ToolCallIn] = []
    for call in value:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"messages[{index}].tool_calls: each call needs a function with a name.",
                              param="messages")
        arguments = function.get("arguments")
        call_id = call.get("id")
        extra = call.get("extra_content")
        calls.append(ToolCallIn(
            id=call_id if isinstance(call_id, str) else "",
            name=function["name"],
            arguments=arguments if isinstance(arguments, str) else "",
            extra={"extra_content": extra} if isinstance(extra, dict) else {},
        ))
    return calls


def _tools(value: object) -> list[ToolSpec]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request("'tools' must be a list.", param="tools")
    tools: list[ToolSpec] = []
    for tool in value:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise bad_request("Only tools of type 'function' are supported for this provider.", param="tools",
                              code="unsupported_parameter")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request("Every tool function needs a name.", param="tools")
        description = function.get("description")
        parameters = function.get("parameters")
        tools.append(ToolSpec(
            name=name,
            description=description if isinstance(description, str) else None,
            parameters=parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}},
        ))
    return tools


def _tool_choice(value: object) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if value in ("auto", "none", "required"):
        return str(value), None
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return "function", name
    raise bad_request("'tool_choice' must be auto, none, required or {type: function, function: {name}}.",
                      param="tool_choice")


def _response_format(value: object, req: ChatRequest) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        req.response_format = "json_object"
        return
    if kind == "json_schema":
        spec = value.get("json_schema") if isinstance(value, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request("response_format json_schema needs json_schema.schema.", param="response_format")
        req.response_format = "json_schema"
        req.json_schema = schema
        name = spec.get("name") if isinstance(spec, dict) else None
        req.json_schema_name = name if isinstance(name, str) else None
        return
    raise bad_request("'response_format' must be of type text, json_object or json_schema.",
                      param="response_format")


def tool_result_object(text: str) -> Any:
    """A tool result as a JSON value when it is one (providers that want objects), else {"result": text}."""
    try:
        value = _json_decode.decode(text)
    except msgspec.DecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}
