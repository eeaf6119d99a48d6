"""Loading a config: YAML -> ${VAR} expansion -> pydantic validation, with errors that name key, value and rule."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sluicegate.config.schema import Config

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEYS = ("api_key", "key", "password", "redis_url", "dsn")


class ConfigError(Exception):
    """Raised for any invalid config; str() is the full, user-facing list of problems."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _is_secret(loc: tuple[int | str, ...]) -> bool:
    return any(isinstance(p, str) and p in _SECRET_KEYS for p in loc)


def _yaml_on_key(tree: Any) -> Any:
    """YAML 1.1 reads the bare key `on` (as in `retry: {on: [...]}`) as the boolean true; give it its name back."""
    if isinstance(tree, dict):
        return {("on" if k is True else k): _yaml_on_key(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_yaml_on_key(v) for v in tree]
    return tree


def expand_env(tree: Any, env: Mapping[str, str], loc: tuple[int | str, ...] = ()) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; `$$` is a literal `$`. Unset VAR without default: error."""
    if isinstance(tree, dict):
        return {k: expand_env(v, env, (*loc, str(k))) for k, v in tree.items()}
    if isinstance(tree, list):
        return [expand_env(v, env, (*loc, i)) for i, v in enumerate(tree)]
    if not isinstance(tree, str) or "$" not in tree:
        return tree

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None:
            if default is not None:
                return default
            raise ConfigError(
                [f"{_path(loc)}: environment variable {name} is not set "
                 f"(set it, or write ${{{name}:-default}} to give a default)"]
            )
        return value

    return _VAR.sub(replace, tree)


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed at the parent of `loc`, found by walking the schema (for 'unknown key' errors)."""
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _format_error(err: Mapping[str, Any]) -> str:
    loc: tuple[int | str, ...] = tuple(err.get("loc", ()))
    # pydantic puts the union member / validator name into loc; drop the noise.
    loc = tuple(p for p in loc if not (isinstance(p, str) and (p.startswith("function-") or "[" in p)))
    kind = err.get("type", "")
    where = _path(loc)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc)
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"{where}: unknown key{hint}"
    if kind == "missing":
        return f"{where}: required key is missing"
    value = "<hidden>" if _is_secret(loc) else repr(err.get("input"))
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "value_error" and loc == ():
        return message  # cross-field checks already name their keys
    if kind == "value_error" and isinstance(err.get("input"), dict):
        return f"{where}: {message}"
    return f"{where}: {value} is not allowed: {message}"


def parse_config(tree: Any, env: Mapping[str, str] | None = None, source: str = "config") -> Config:
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError([f"(top level): expected a mapping of keys, got {type(tree).__name__}"], source)
    try:
        expanded = expand_env(tree, os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    try:
        return Config.model_validate(expanded)
    except ValidationError as exc:
        errors = exc.errors()
        # A list whose only item failed also reports "too short"; the item's own error says it better.
        failed = [tuple(e["loc"]) for e in errors]
        errors = [
            e for e in errors
            if not (e["type"] == "too_short" and any(f[: len(e["loc"])] == tuple(e["loc"]) and f != tuple(e["loc"])
                                                     for f in failed))
        ]
        raise ConfigError([_format_error(e) for e in errors], source) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], source) from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}not valid YAML: {problem}"], source) from None
    return parse_config(_yaml_on_key(tree), env, source)


def default_config(env: Mapping[str, str] | None = None) -> Config:
    """The embedded default: the built-in demo model, plus OpenAI's models when OPENAI_API_KEY is set."""
    env = os.environ if env is None else env
    models: list[dict[str, Any]] = [
        {"name": "sluicegate/demo", "deployments": [{"provider": "demo", "name": "demo"}]},
    ]
    if env.get("OPENAI_API_KEY"):
        openai = {
            "provider": "openai",
            "name": "openai",
            "api_base": env.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            "model": "*",
            "api_key": "${OPENAI_API_KEY}",
        }
        models.append({"name": "openai/*", "deployments": [openai]})
        models.append({"name": "*", "deployments": [openai]})
    usage = {"dsn": "${SLUICEGATE_USAGE_DSN:-sluicegate-usage.db}"}
    return parse_config({"models": models, "usage": usage}, env, "embedded default config")
