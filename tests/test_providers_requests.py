"""OpenAI chat requests translated to each provider's request, provider error answers mapped to OpenAI errors,
and non-streaming responses translated back."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from sluicegate.config.schema import DeploymentConfig
from sluicegate.providers.anthropic import AnthropicAdapter
from sluicegate.providers.bedrock import BedrockAdapter
from sluicegate.providers.gemini import GeminiAdapter
from sluicegate.providers.ollama import OllamaAdapter
from sluicegate.providers.registry import adapter_for
from sluicegate.types import Endpoint, GatewayError, GatewayRequest

PNG = "data:image/png;base64,iVBORw0KGgo="
RICH: dict[str, Any] = {
    "model": "public",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                                     {"type": "image_url", "image_url": {"url": PNG}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "description": "Get weather",
                                                "parameters": {"type": "object", "properties": {"city": {}}}}}],
    "tool_choice": "required",
    "max_completion_tokens": 300,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": "END",
    "stream": True,
    "stream_options": {"include_usage": True},
    "seed": 3,
    "store": False,
}


def request(body: dict[str, Any], endpoint: Endpoint = Endpoint.CHAT) -> GatewayRequest:
    return GatewayRequest(id="r1", endpoint=endpoint, body=body, model="public", stream=bool(body.get("stream")),
                          client_wants_usage=True, arrived=0.0, arrived_wall=1_700_000_000.0)


def deployment(provider: str, **extra: Any) -> DeploymentConfig:
    return DeploymentConfig(provider=provider, api_key="secret-key", **extra)  # type: ignore[arg-type]


def test_anthropic_request() -> None:
    up = AnthropicAdapter().build_request(request(RICH), deployment("anthropic"), "claude-x")
    body = json.loads(up.body)
    assert up.url == "https://api.anthropic.com/v1/messages"
    assert up.headers["x-api-key"] == "secret-key" and up.headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}]
    assert body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp": 21}'},
            {"type": "text", "text": "Thanks"}]},
    ]
    assert body["tools"] == [{"name": "weather", "description": "Get weather",
                              "input_schema": {"type": "object", "properties": {"city": {}}}}]
    assert body["tool_choice"] == {"type": "any"}
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop_sequences"]) == (300, 0.5, 0.9,
                                                                                                 ["END"])
    assert body["stream"] is True and "seed" not in body and "store" not in body


def test_anthropic_defaults_and_thinking() -> None:
    body = json.loads(AnthropicAdapter().build_request(
        request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "medium"}),
        deployment("anthropic", api_version="2024-01-01"), "c").body)
    assert body["max_tokens"] == 4096 + 4096 and body["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    plain = json.loads(AnthropicAdapter().build_request(
        request({"model": "m", "messages": [{"role": "user", "content": "hi"}]}), deployment("anthropic"), "c").body)
    assert plain["max_tokens"] == 4096 and "stream" not in plain


def test_gemini_request() -> None:
    up = GeminiAdapter().build_request(request(RICH), deployment("gemini"), "gemini-2.5-flash")
    body = json.loads(up.body)
    assert up.url == ("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:"
                      "streamGenerateContent?alt=sse")
    assert up.headers["x-goog-api-key"] == "secret-key"
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use tools."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather here?"},
                                   {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"temp": 21}}},
                                   {"text": "Thanks"}]},
    ]
    assert body["generationConfig"] == {"maxOutputTokens": 300, "temperature": 0.5, "topP": 0.9,
                                        "stopSequences": ["END"], "seed": 3}
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["type"] == "object"
    non_stream = GeminiAdapter().build_request(request({**RICH, "stream": False}), deployment("gemini"), "g")
    assert non_stream.url.endswith("/models/g:generateContent")


def test_gemini_sends_the_thought_signature_back() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"},
            "extra_content": {"google": {"thought_signature": "SIG"}}}
    body = json.loads(GeminiAdapter().build_request(request({"model": "m", "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}]}), deployment("gemini"), "g").body)
    assert body["contents"][1]["parts"] == [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "SIG"}]
    assert body["contents"][2]["parts"][0]["functionResponse"]["response"] == {"result": "done"}


def test_bedrock_request_is_sigv4_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    up = BedrockAdapter().build_request(request(RICH), deployment("bedrock", region="eu-west-3"),
                                        "anthropic.claude-3-haiku-20240307-v1:0")
    assert up.url == ("https://bedrock-runtime.eu-west-3.amazonaws.com/model/"
                      "anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream")
    auth = up.headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-3/bedrock/aws4_request" in auth and "SignedHeaders=" in auth and "Signature=" in auth
    assert "X-Amz-Date" in up.headers and "secret-key" not in json.dumps(up.headers)
    body = json.loads(up.body)
    assert body["system"] == [{"text": "Be brief."}, {"text": "Use tools."}]
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "call_1", "name": "weather", "input": {"city": "Paris"}}}]}
    assert body["messages"][2]["content"][0] == {"toolResult": {"toolUseId": "call_1",
                                                                "content": [{"text": '{"temp": 21}'}]}}
    assert body["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
    assert body["inferenceConfig"] == {"maxTokens": 300, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]}
    assert body["toolConfig"]["toolChoice"] == {"any": {}}
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"] == "object"


def test_bedrock_without_botocore_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "botocore.auth", None)  # what a missing package looks like to `import`
    with pytest.raises(GatewayError) as info:
        BedrockAdapter().build_request(request({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                                       deployment("bedrock", region="us-east-1"), "m")
    assert "sluicegate[bedrock]" in info.value.message and info.value.status == 500


def test_ollama_request() -> None:
    up = OllamaAdapter().build_request(request(RICH), deployment("ollama"), "qwen3")
    body = json.loads(up.body)
    assert up.url == "http://127.0.0.1:11434/api/chat" and up.headers["Authorization"] == "Bearer secret-key"
    assert [m["role"] for m in body["messages"]] == ["system", "system", "user", "assistant", "tool", "user"]
    assert body["messages"][2]["images"] == ["iVBORw0KGgo="]
    assert body["messages"][3]["tool_calls"] == [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}]
    assert body["messages"][4]["tool_name"] == "weather"
    assert body["options"] == {"num_predict": 300, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["END"]}
    assert body["stream"] is True


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "ollama", "bedrock"])
def test_refusals(provider: str) -> None:
    adapter = adapter_for(provider)
    dep = deployment(provider, region="us-east-1") if provider == "bedrock" else deployment(provider)
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(GatewayError) as info:
        adapter.build_request(request({"model": "m", "input": "hi"}, Endpoint.RESPONSES), dep, "m")
    assert (info.value.status, info.value.code) == (400, "unsupported_endpoint")
    for extra, param in (({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"frobnicate": 1}, "frobnicate"),
                         ({"audio": {"voice": "x"}}, "audio")):
        with pytest.raises(GatewayError) as info:
            adapter.build_request(request({**base, **extra}), dep, "m")
        assert (info.value.status, info.value.code, info.value.param) == (400, "unsupported_parameter", param)


def test_forward_fields_are_copied_as_is() -> None:
    body = json.loads(AnthropicAdapter().build_request(
        request({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_k": 5}),
        deployment("anthropic", forward_fields=["top_k"]), "c").body)
    assert body["top_k"] == 5


@pytest.mark.parametrize(("provider", "status", "body", "client_status", "code", "message"), [
    ("anthropic", 529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', 503,
     "overloaded_error", "Overloaded"),
    ("anthropic", 400, b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: bad"}}', 400,
     "invalid_request_error", "max_tokens: bad"),
    ("gemini", 429, b'{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}', 429,
     "RESOURCE_EXHAUSTED", "Quota exceeded"),
    ("gemini", 400, b'[{"error":{"code":400,"message":"Bad","status":"INVALID_ARGUMENT"}}]', 400, "INVALID_ARGUMENT",
     "Bad"),
    ("bedrock", 429, b'{"message":"Too many requests, please wait before trying again."}', 429, "ThrottlingException",
     "Too many requests, please wait before trying again."),
    ("bedrock", 424, b'{"message":"Model failed"}', 502, "ModelErrorException", "Model failed"),
    ("bedrock", 503, b'{"message":"Busy"}', 503, "ServiceUnavailableException", "Busy"),
    ("ollama", 404, b'{"error":"model \\"x\\" not found, try pulling it first"}', 404, "upstream_http_404",
     'model "x" not found, try pulling it first'),
    ("ollama", 502, b"<html>bad gateway</html>", 502, "upstream_http_502", "ollama answered HTTP 502: <html>bad"),
])
def test_error_answers_map_to_openai_errors(provider: str, status: int, body: bytes, client_status: int, code: str,
                                            message: str) -> None:
    error = adapter_for(provider).error_from_response(status, body, 2.0)
    assert (error.status, error.code, error.retry_after) == (client_status, code, 2.0)
    assert error.message.startswith(message)
    assert error.payload()["error"]["type"] and error.upstream_body is None


@pytest.mark.parametrize(("provider", "body", "content", "tools", "finish", "usage"), [
    ("anthropic", {"id": "msg_1", "type": "message", "role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}], "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 3}},
     "Hi", [("toolu_1", "f", {"a": 1})], "tool_calls", (15, 3)),
    ("gemini", {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}, {"text": "lo"}]},
                                "finishReason": "MAX_TOKENS", "index": 0}],
                "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 7},
                "responseId": "abc"},
     "Hello", [], "length", (4, 9)),
    ("bedrock", {"output": {"message": {"role": "assistant", "content": [
        {"text": "Sure"}, {"toolUse": {"toolUseId": "tu1", "name": "g", "input": {}}}]}}, "stopReason": "tool_use",
        "usage": {"inputTokens": 8, "outputTokens": 2, "totalTokens": 10}},
     "Sure", [("tu1", "g", {})], "tool_calls", (8, 2)),
    ("ollama", {"model": "q", "message": {"role": "assistant", "content": "Yo"}, "done": True,
                "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 1},
     "Yo", [], "stop", (3, 1)),
])
def test_non_stream_responses_become_chat_completions(provider: str, body: dict[str, Any], content: str,
                                                      tools: list[tuple[str, str, Any]], finish: str,
                                                      usage: tuple[int, int]) -> None:
    result = adapter_for(provider).nonstream_result(request({"model": "m", "messages": []}),
                                                    json.dumps(body).encode())
    out = json.loads(result.body)
    assert out["object"] == "chat.completion" and out["model"] == "public"
    message = out["choices"][0]["message"]
    assert message["content"] == content and message["role"] == "assistant"
    got = [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
           for c in message.get("tool_calls", [])]
    assert got == tools
    assert out["choices"][0]["finish_reason"] == result.finish_reason == finish
    assert (out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]) == usage
    assert result.usage is not None and (result.usage.prompt_tokens, result.usage.completion_tokens) == usage


def test_config_defaults_for_translated_providers() -> None:
    assert deployment("gemini").api_base == "https://generativelanguage.googleapis.com/v1beta"
    assert deployment("ollama").api_base == "http://127.0.0.1:11434"
    assert deployment("bedrock", region="ap-south-1").api_base == "https://bedrock-runtime.ap-south-1.amazonaws.com"
    with pytest.raises(ValueError, match="region"):
        deployment("bedrock")
