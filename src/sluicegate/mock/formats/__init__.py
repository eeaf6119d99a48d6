"""Wire formats the mock upstream can speak, by `--format` name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from sluicegate.mock.formats.anthropic import AnthropicApi
from sluicegate.mock.formats.base import RequestInfo, StreamEncoder, StreamFormat, WireApi
from sluicegate.mock.formats.bedrock import BedrockApi
from sluicegate.mock.formats.gemini import GeminiApi, gemini_array_api
from sluicegate.mock.formats.ollama import OllamaApi
from sluicegate.mock.formats.openai import OpenAIApi

WIRE_APIS: Final[dict[str, Callable[[], WireApi]]] = {
    "openai": OpenAIApi,
    "anthropic": AnthropicApi,
    "gemini": GeminiApi,
    "gemini-array": gemini_array_api,
    "bedrock": BedrockApi,
    "ollama": OllamaApi,
}


def wire_api(name: str) -> WireApi:
    """The wire API called `name`; raises ValueError naming the known ones."""
    try:
        factory = WIRE_APIS[name]
    except KeyError:
        raise ValueError(f"unknown mock format {name!r}; known formats: {', '.join(WIRE_APIS)}") from None
    return factory()


__all__ = ["WIRE_APIS", "RequestInfo", "StreamEncoder", "StreamFormat", "WireApi", "wire_api"]
