"""Config loading: the issue's schema works as written, errors name key + value + rule, `${VAR}` expansion,
`check-config` and `serve` refuse bad files with the same message, the embedded default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sluicegate.config.loader import ConfigError, default_config, load_config, parse_config

ISSUE_SCHEMA = """
server:
  host: 127.0.0.1
  port: 4000
models:
  - name: my-model                # the name clients send
    deployments:
      - provider: openai          # any OpenAI-compatible server
        api_base: http://127.0.0.1:9000/v1
        model: upstream-name      # rewritten into the upstream request
        api_key: ${OPENAI_API_KEY}  # ${VAR} is read from the environment; optional
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluicegate.yaml"
    path.write_text(text)
    return path


def test_issue_schema_loads_as_written(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ISSUE_SCHEMA), {"OPENAI_API_KEY": "sk-test"})
    deployment = config.models[0].deployments[0]
    assert config.server.port == 4000
    assert deployment.api_base == "http://127.0.0.1:9000/v1" and deployment.model == "upstream-name"
    assert deployment.api_key is not None and deployment.api_key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(config)  # secrets never show up in reprs (or logs)


def test_unset_variable_names_variable_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, ISSUE_SCHEMA), {})
    assert "models[0].deployments[0].api_key: environment variable OPENAI_API_KEY is not set" in str(info.value)


def test_variable_default_and_dollar_escape() -> None:
    config = parse_config({"models": [{"name": "a$$b", "deployments": [
        {"provider": "openai", "api_base": "${BASE:-http://127.0.0.1:1/v1}"}]}]}, {})
    assert config.models[0].name == "a$b"
    assert config.models[0].deployments[0].api_base == "http://127.0.0.1:1/v1"


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"server": {"port": 70000}}, "server.port: 70000 is not allowed: Input should be less than or equal to 65535"),
        ({"server": {"prot": 1}}, "server.prot: unknown key; allowed keys here:"),
        ({"models": [{"name": "m", "deployments": [{"provider": "nope", "api_base": "http://x"}]}]},
         "models[0].deployments[0].provider: 'nope' is not allowed: Input should be 'openai'"),
        ({"models": [{"name": "m", "deployments": [{"provider": "openai", "api_base": "ftp://x"}]}]},
         "models[0].deployments[0].api_base: 'ftp://x' is not allowed: must be an http:// or https:// URL"),
        ({"models": [{"name": "m", "deployments": [{"provider": "openai"}]}]},
         "models[0].deployments[0]: api_base is required for provider 'openai'"),
        ({"models": [{"name": "m", "timeouts": {"idle": "soon"}, "deployments": [
            {"provider": "openai", "api_base": "http://x"}]}]},
         "models[0].timeouts.idle: 'soon' is not allowed: expected a duration such as 250ms"),
        ({"models": [{"name": "m", "timeouts": {"idle": "inf"}, "deployments": [
            {"provider": "openai", "api_base": "http://x"}]}]}, "a duration must be a finite number"),
        ({"models": [{"name": "m", "fallbacks": ["x"], "deployments": [{"provider": "openai", "api_base": "http://x"}]}]},
         "models[0].fallbacks: 'x' is not a model defined in this file"),
        ({"usage": {"dsn": "mysql://db"}}, "usage.dsn: <hidden> is not allowed: must be a SQLite file path"),
        ({"auth": {"keys": [{"name": "k", "key": "short"}]}}, "key is shorter than 8 characters"),
        ({"auth": {"keys": [{"name": "k", "key_sha256": "abc"}]}},
         "auth.keys[0].key_sha256: 'abc' is not allowed: must be 64 hex digits"),
        ({"state": {"backend": "redis"}}, "state.redis_url is required when state.backend is redis"),
        ({"models": [{"name": "m", "deployments": [{"provider": "openai", "api_base": "http://x",
                                                    "headers": {"X-Team": "a\r\nHost: elsewhere"}}]}]},
         "models[0].deployments[0].headers: the value of header 'X-Team' contains a line break or NUL"),
        ({"models": [{"name": "m", "deployments": [{"provider": "openai", "api_base": "http://x",
                                                    "headers": {"X Team": "a"}}]}]},
         "models[0].deployments[0].headers: 'X Team' is not a valid HTTP header name"),
        ({"models": [{"name": "m", "deployments": [{"provider": "openai", "api_base": "http://x",
                                                    "api_key": "sk-abc\n"}]}]},
         "models[0].deployments[0].api_key: <hidden> is not allowed: contains a line break or NUL"),
        ({"state": {"redis_timeout": "0s"}}, "state.redis_timeout: '0s' is not allowed: must be more than 0"),
        ({"state": {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0", "lease_ttl": "3s",
                    "redis_timeout": "1s"}},
         "state.redis_timeout (1s) must be less than a third of state.lease_ttl (3s)"),
    ],
)
def test_errors_name_key_value_and_rule(tree: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tree, {})
    assert message in str(info.value)


def test_yaml_bare_on_key_is_retry_on(tmp_path: Path) -> None:
    text = ISSUE_SCHEMA.replace("${OPENAI_API_KEY}", "sk-x") + "    retry:\n      on: [reset, 503]\n"
    config = load_config(write(tmp_path, text), {})
    assert config.models[0].retry.on == ("reset", 503)


def test_yaml_syntax_error_has_a_line_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "models: [\n  {name: x\n"), {})
    assert "line" in str(info.value) and "not valid YAML" in str(info.value)


def test_embedded_default() -> None:
    assert [m.name for m in default_config({}).models] == ["sluicegate/demo"]
    with_openai = default_config({"OPENAI_API_KEY": "sk-x"})
    assert [m.name for m in with_openai.models] == ["sluicegate/demo", "openai/*", "*"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluicegate", *args], capture_output=True, text=True, timeout=60)


def test_check_config_and_serve_refuse_a_bad_file_with_the_same_message(tmp_path: Path) -> None:
    bad = write(tmp_path, "server: {port: nope}\nmodels: [{name: m, deployments: [{provider: openai}]}]\n")
    checked = run_cli("check-config", str(bad))
    served = run_cli("serve", "--config", str(bad))
    assert checked.returncode == 2 and served.returncode == 2
    assert "server.port: 'nope' is not allowed" in checked.stderr
    assert "models[0].deployments[0]: api_base is required" in checked.stderr
    assert checked.stderr == served.stderr


def test_check_config_ok(tmp_path: Path) -> None:
    good = write(tmp_path, ISSUE_SCHEMA.replace("${OPENAI_API_KEY}", "${OPENAI_API_KEY:-}"))
    result = run_cli("check-config", str(good))
    assert result.returncode == 0, result.stderr
    assert "OK (1 models: my-model)" in result.stdout
