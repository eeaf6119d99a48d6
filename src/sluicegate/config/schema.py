"""The configuration schema. Every key is documented in docs/configuration.md; keep the two in step.

Durations are stored as float seconds. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from sluicegate.config.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]


def _more_than_zero(value: float) -> float:
    if value <= 0:
        raise ValueError("must be more than 0 (e.g. 500ms or 15s)")
    return value


PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_more_than_zero)]

# OpenAI-compatible servers are all served by the pass-through adapter; the aliases document their quirks.
OPENAI_COMPATIBLE = ("openai", "vllm", "sglang", "tgi", "llamacpp", "ollama-openai")
# Providers whose API is translated to and from OpenAI chat completions (see providers/<name>.py).
TRANSLATED = ("anthropic", "gemini", "bedrock", "ollama")
ProviderName = Literal[
    "openai", "vllm", "sglang", "tgi", "llamacpp", "ollama-openai", "demo", "anthropic", "gemini", "bedrock", "ollama",
]
# Where a translated provider lives when the deployment gives no api_base (bedrock's depends on the region).
DEFAULT_API_BASES = {
    "anthropic": "https://api.anthropic.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "ollama": "http://127.0.0.1:11434",
}

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


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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
    # Translated providers only.
    region: str | None = None  # bedrock: AWS region (default: from api_base, then AWS_REGION / AWS_DEFAULT_REGION)
    api_version: str | None = None  # anthropic: the anthropic-version header (default 2023-06-01)
    forward_fields: tuple[str, ...] = ()  # request keys copied unchanged into the translated provider request

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
            if any(c in header for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} contains a line break or NUL")
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and any(c in value.get_secret_value() for c in "\r\n\0"):
            raise ValueError("contains a line break or NUL (check the environment variable it comes from)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_api_base(cls, data: object) -> object:
        if not isinstance(data, dict) or data.get("api_base") is not None:
            return data
        provider, region = data.get("provider"), data.get("region")
        if provider in DEFAULT_API_BASES:
            return {**data, "api_base": DEFAULT_API_BASES[provider]}
        if provider == "bedrock" and isinstance(region, str) and region:
            return {**data, "api_base": f"https://bedrock-runtime.{region}.amazonaws.com"}
        return data

    @model_validator(mode="after")
    def _needs_api_base(self) -> DeploymentConfig:
        if self.api_base is None and self.provider == "bedrock":
            raise ValueError("provider 'bedrock' needs a region (or an api_base), e.g. region: us-east-1")
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
    chunks_per_yield: int = Field(default=4, ge=1)
    bytes_per_yield: int = Field(default=32 * 1024, ge=1024)
    heartbeat_interval: Duration = 15.0  # 0 = no heartbeats
    heartbeat_before_first_chunk: bool = False
    max_streams: int = Field(default=0, ge=0)  # per worker process; 0 = unlimited
    queue_timeout: Duration = 0.0
    shed_lag: Duration = 1.0  # event-loop lag above which new streams get 503; 0 = never shed
    # Memory per stream is bounded by these three (docs/operations.md "Memory per stream").
    upstream_read_buffer: int = Field(default=4 * 1024, ge=1024)  # most bytes taken from the upstream per read
    upstream_socket_buffer: int = Field(default=8 * 1024, ge=0)  # SO_RCVBUF of upstream sockets; 0 = OS default
    client_write_buffer: int = Field(default=8 * 1024, ge=1024)  # client transport high-water mark
    max_event_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    shutdown_grace: Duration = 30.0
    metrics: bool = True  # false: /metrics still answers, but requests are not counted (for A/B benchmarks)


_SHA256 = re.compile(r"[0-9a-f]{64}")


class ApiKeyConfig(Strict):
    """A client API key: given as `key` (usually `${ENV}`) or as `key_sha256`, the hex SHA-256 of the key."""

    name: str = Field(min_length=1)
    key: SecretStr | None = None
    key_sha256: str | None = None
    models: tuple[str, ...] = ()  # allowed public model names ('*' patterns allowed); empty = every model
    max_concurrent: int = Field(default=0, ge=0)  # concurrent requests of this key; 0 = unlimited
    rpm: int = Field(default=0, ge=0)  # requests per minute; 0 = unlimited
    admin: bool = False  # may read /v1/usage and /v1/requests/{id}

    @field_validator("key_sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.fullmatch(value.lower()):
            raise ValueError("must be 64 hex digits (the SHA-256 of the key, e.g. from `sha256sum`)")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _one_form(self) -> ApiKeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key (e.g. ${MY_KEY}) or key_sha256")
        if self.key is not None and len(self.key.get_secret_value()) < 8:
            raise ValueError("key is shorter than 8 characters; use a long random key")
        return self

    def digest(self) -> str:
        if self.key_sha256 is not None:
            return self.key_sha256
        assert self.key is not None
        return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()


class AuthConfig(Strict):
    keys: tuple[ApiKeyConfig, ...] = ()  # none = open gateway (the embedded default)

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        names = [k.name for k in self.keys]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"auth.keys: names must be unique; defined twice: {', '.join(sorted(dup))}")
        digests = [k.digest() for k in self.keys]
        if len(set(digests)) != len(digests):
            raise ValueError("auth.keys: two entries have the same key")
        return self


class StateConfig(Strict):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    lease_ttl: PositiveDuration = 15.0
    redis_timeout: PositiveDuration = 1.0  # one Redis call; two timeouts in a row count as "Redis is unavailable"
    on_unavailable: Literal["fail_open", "fail_closed"] = "fail_open"
    expected_instances: int = Field(default=1, ge=1)
    key_prefix: str = "sluicegate:"

    @model_validator(mode="after")
    def _redis_url(self) -> StateConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("state.redis_url is required when state.backend is redis (e.g. redis://127.0.0.1:6379/0)")
        if self.backend == "redis" and self.redis_timeout * 3 >= self.lease_ttl:
            # Renewals start lease_ttl/3 after the previous one ended and may take two tries of redis_timeout each:
            # both must fit in the lease's lifetime.
            raise ValueError(f"state.redis_timeout ({self.redis_timeout:g}s) must be less than a third of "
                             f"state.lease_ttl ({self.lease_ttl:g}s): leases are renewed lease_ttl/3 after the last "
                             "renewal, which may take twice redis_timeout, and must be renewed before they run out")
        return self


class UsageConfig(Strict):
    enabled: bool = True
    dsn: str = "sluicegate-usage.db"  # a SQLite path (or sqlite:///path), or postgresql://...
    max_queue: int = Field(default=10_000, ge=1)
    batch_size: int = Field(default=500, ge=1)
    flush_interval: PositiveDuration = 0.5
    prepared_statements: bool = True  # PostgreSQL only: false behind a pooler in transaction mode

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("", "sqlite", "postgres", "postgresql"):
            raise ValueError("must be a SQLite file path (or sqlite:///path) or a postgresql://user@host/db URL")
        return value


class LogConfig(Strict):
    access_log: bool = True  # one JSON line per request at its end, on stderr
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(Strict):
    server: ServerConfig = ServerConfig()
    models: tuple[ModelConfig, ...] = ()
    auth: AuthConfig = AuthConfig()
    state: StateConfig = StateConfig()
    usage: UsageConfig = UsageConfig()
    logging: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [m.name for m in self.models]
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                raise ValueError(f"models[{index}].name: {name!r} is defined twice; model names must be unique")
            seen.add(name)
        labels: dict[str, tuple[str, DeploymentConfig]] = {}
        for index, model in enumerate(self.models):
            for position, deployment in enumerate(model.deployments):
                label = deployment.label()
                where = f"models[{index}].deployments[{position}]"
                seen_at = labels.get(label)
                # The same deployment may serve several models; two different ones may not share a name.
                if seen_at is not None and (seen_at[1] != deployment or seen_at[0].startswith(f"models[{index}]")):
                    raise ValueError(
                        f"{where}: its name {label!r} is also used by {seen_at[0]}; deployments share caps, "
                        "cooldowns and metrics by name, so give each one its own `name`"
                    )
                labels[label] = (where, deployment)
            for fallback in model.fallbacks:
                if "*" in fallback:
                    raise ValueError(f"models[{index}].fallbacks: {fallback!r} is a wildcard; a fallback must name "
                                     "one model")
                if fallback not in seen:
                    raise ValueError(
                        f"models[{index}].fallbacks: {fallback!r} is not a model defined in this file "
                        f"(defined: {', '.join(names)})"
                    )
        return self
