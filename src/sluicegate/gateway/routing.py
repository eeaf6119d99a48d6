"""Public model name -> the pool of deployments that can serve it, and which one to try next."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from sluicegate.config.schema import Config, DeploymentConfig, ModelConfig, TimeoutsConfig
from sluicegate.providers.base import ProviderAdapter
from sluicegate.providers.registry import adapter_for
from sluicegate.types import GatewayError, Outcome


@dataclass(eq=False)
class Deployment:
    """One upstream of a model, with the live numbers routing looks at."""

    config: DeploymentConfig
    adapter: ProviderAdapter
    label: str
    timeouts: TimeoutsConfig
    api_base: str | None
    in_flight: int = 0
    ttft_ewma: float | None = None
    recent_failures: int = 0  # local hint: failures since the last success seen by this process
    maybe_cooling: bool = False  # local hint: a cooldown was started here; ask the state backend

    def upstream_model(self, matched: str, requested: str) -> str:
        model = self.config.model
        if model is None:
            return requested
        return model.replace("*", matched) if "*" in model else model

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_ewma = seconds if self.ttft_ewma is None else 0.8 * self.ttft_ewma + 0.2 * seconds


@dataclass(eq=False)
class ModelPool:
    config: ModelConfig
    deployments: list[Deployment]
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def name(self) -> str:
        return self.config.name

    def next_index(self) -> int:
        return next(self._counter)


@dataclass(frozen=True, slots=True)
class Route:
    pool: ModelPool
    matched: str  # what a wildcard matched (the whole name for exact routes)


class Router:
    def __init__(self, config: Config, demo_api_base: str | None = None) -> None:
        self._exact: dict[str, ModelPool] = {}
        self._patterns: list[tuple[str, str, ModelPool]] = []
        self.pools: list[ModelPool] = []
        for model in config.models:
            pool = ModelPool(model, [self._deployment(model, d, demo_api_base) for d in model.deployments])
            self.pools.append(pool)
            if "*" in model.name:
                prefix, _, suffix = model.name.partition("*")
                self._patterns.append((prefix, suffix, pool))
            else:
                self._exact[model.name] = pool

    @staticmethod
    def _deployment(model: ModelConfig, d: DeploymentConfig, demo_api_base: str | None) -> Deployment:
        label = d.label()  # before the demo's private address is filled in: labels must not change per restart
        api_base = demo_api_base if d.provider == "demo" else d.api_base
        if api_base is not None and d.provider == "demo":
            d = d.model_copy(update={"api_base": api_base})
        return Deployment(d, adapter_for(d.provider), label, d.timeouts.apply(model.timeouts), api_base)

    def pool(self, name: str) -> ModelPool | None:
        return self._exact.get(name)

    def resolve(self, name: str) -> Route:
        pool = self._exact.get(name)
        if pool is not None:
            return Route(pool, name)
        for prefix, suffix, pool in self._patterns:
            if name.startswith(prefix) and name.endswith(suffix) and len(name) >= len(prefix) + len(suffix):
                return Route(pool, name[len(prefix) : len(name) - len(suffix)])
        raise GatewayError(
            404, f"The model {name!r} does not exist on this gateway; GET /v1/models lists the models it serves.",
            type="invalid_request_error", code="model_not_found", param="model", outcome=Outcome.INVALID,
        )

    def public_models(self) -> list[str]:
        return [p.name for p in self.pools if "*" not in p.name]
