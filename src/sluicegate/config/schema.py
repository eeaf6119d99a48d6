"""The configuration schema. Every key is documented in docs/configuration.md; keep the two in step.

Durations are stored as float seconds. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator, model_validator

from sluicegate.config.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]

# OpenAI-compatible servers are all served by the pass-through adapter; the aliases document their quirks.
OPENAI_COMPATIBLE = ("openai", "vllm", "sglang", "tgi", "llamacpp", "ollama-openai")
ProviderName = Literal["openai", "vllm", "sglang", "tgi", "llamacpp", "ollama-openai", "demo"]

RetryCondition = Literal[
    "connect_error", "reset", "timeout_connect", "timeout_first_chunk", "error_event", 408, 409, 429, 500, 502, 503,
    504,
]
RoutingStrategy = Literal["round_robin", "weighted", "least_in_flight", "lowest_ttft", "sticky"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeoutsConfig(Strict):
    connect: Duration = 5.0
    first_chunk: Duration = 60.0
    idle: Duration = 60.0
    total: Duration = 1800.0
    write_stall: Duration = 30.0
    request: Duration = 600.0  # non-streaming requests: the whole response


class TimeoutsOverride(Strict):
    """Per-deployment overrides; absent keys inherit the model's value."""

    connect: Duration | None = None
    first_chunk: Duration | None = None
    idle: Duration | None = None
    total: Duration | None = None
    write_stall: Duration | None = None
    request: Duration | None = None

    def apply(self, base: TimeoutsConfig) -> TimeoutsConfig:
        changes = {k: v for k, v in self.model_dump().items() if v is not None}
        return base.model_copy(update=changes) if changes else base


class RetryConfig(Strict):
    attempts: int = Field(default=3, ge=1, le=10)
    backoff_initial: Duration = 0.25
    backoff_max: Duration = 2.0
    on: tuple[RetryCondition, ...] = (
        "connect_error", "reset", "timeout_connect", "timeout_first_chunk", "error_event", 429, 500, 502, 503, 504,
    )


class RetryBudgetConfig(Strict):
    ratio: float = Field(default=0.2, ge=0.0, le=10.0)
    min_per_second: float = Field(default=5.0, ge=0.0)


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
    return value.rstrip("/")


class DeploymentConfig(Strict):
    provider: ProviderName
    api_base: str | None = None
    model: str | None = None  # upstream model name; None = the client's; '*' = what the model pattern matched
    api_key: SecretStr | None = None
    name: str | None = None  # label in metrics and headers; default derived from provider/host/model
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: TimeoutsOverride = TimeoutsOverride()
    max_concurrent: int = Field(default=0, ge=0)
    weight: float = Field(default=1.0, gt=0.0)

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @model_validator(mode="after")
    def _needs_api_base(self) -> DeploymentConfig:
        if self.api_base is None and self.provider != "demo":
            raise ValueError(f"api_base is required for provider {self.provider!r}")
        return self

    def label(self) -> str:
        if self.name:
            return self.name
        host = urlsplit(self.api_base).netloc if self.api_base else "builtin"
        return f"{self.provider}:{host}/{self.model or '*'}"


class ModelConfig(Strict):
    name: str = Field(min_length=1)
    deployments: tuple[DeploymentConfig, ...] = Field(min_length=1)
    timeouts: TimeoutsConfig = TimeoutsConfig()
    retry: RetryConfig = RetryConfig()
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    routing: RoutingStrategy = "round_robin"
    fallbacks: tuple[str, ...] = ()
    queue_timeout: Duration | None = None  # None = server.queue_timeout
    hedge_after: Duration | None = None
    heartbeat_interval: Duration | None = None  # None = server.heartbeat_interval
    heartbeat_before_first_chunk: bool | None = None
    max_events_per_second: float = Field(default=0.0, ge=0.0)  # per stream, 0 = unlimited
    max_bytes_per_second: float = Field(default=0.0, ge=0.0)
    allowed_fails: int = Field(default=3, ge=1)
    cooldown: Duration = 30.0


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=256)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    chunks_per_yield: int = Field(default=16, ge=1)
    bytes_per_yield: int = Field(default=256 * 1024, ge=1024)
    heartbeat_interval: Duration = 15.0  # 0 = no heartbeats
    heartbeat_before_first_chunk: bool = False
    max_streams: int = Field(default=0, ge=0)  # per worker process; 0 = unlimited
    queue_timeout: Duration = 0.0
    shed_lag: Duration = 1.0  # event-loop lag above which new streams get 503; 0 = never shed
    upstream_read_buffer: int = Field(default=16 * 1024, ge=1024)
    client_write_buffer: int = Field(default=16 * 1024, ge=1024)
    max_event_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    shutdown_grace: Duration = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class Config(Strict):
    server: ServerConfig = ServerConfig()
    models: tuple[ModelConfig, ...] = ()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [m.name for m in self.models]
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                raise ValueError(f"models[{index}].name: {name!r} is defined twice; model names must be unique")
            seen.add(name)
        for index, model in enumerate(self.models):
            for fallback in model.fallbacks:
                if fallback not in seen:
                    raise ValueError(
                        f"models[{index}].fallbacks: {fallback!r} is not a model defined in this file "
                        f"(defined: {', '.join(names)})"
                    )
        return self
