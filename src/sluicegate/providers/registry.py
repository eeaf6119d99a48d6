"""Provider kind (as written in the config) -> adapter instance."""

from __future__ import annotations

from sluicegate.config.schema import OPENAI_COMPATIBLE
from sluicegate.providers.anthropic import AnthropicAdapter
from sluicegate.providers.base import ProviderAdapter
from sluicegate.providers.bedrock import BedrockAdapter
from sluicegate.providers.gemini import GeminiAdapter
from sluicegate.providers.ollama import OllamaAdapter
from sluicegate.providers.openai import OpenAIAdapter

_ADAPTERS: dict[str, ProviderAdapter] = {name: OpenAIAdapter(name) for name in OPENAI_COMPATIBLE}
# The built-in demo model is the mock upstream run in-process, which speaks OpenAI's format.
_ADAPTERS["demo"] = OpenAIAdapter("demo")
# Translated providers: OpenAI chat completions in, the provider's own API upstream.
_ADAPTERS["anthropic"] = AnthropicAdapter()
_ADAPTERS["gemini"] = GeminiAdapter()
_ADAPTERS["bedrock"] = BedrockAdapter()
_ADAPTERS["ollama"] = OllamaAdapter()


def adapter_for(provider: str) -> ProviderAdapter:
    try:
        return _ADAPTERS[provider]
    except KeyError:
        raise ValueError(f"no adapter for provider {provider!r}; known: {', '.join(sorted(_ADAPTERS))}") from None
