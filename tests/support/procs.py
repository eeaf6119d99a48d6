"""Real processes for tests: the mock upstream and gateways, each on a free 127.0.0.1 port.

A process prints one ready line with its URL; we wait for it (bounded) and always kill the process afterwards.
"""

from __future__ import annotations

import atexit
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

READY_TIMEOUT = 30.0
# Logs, configs and usage databases of the test processes: one directory, removed when the test run ends.
SCRATCH = tempfile.mkdtemp(prefix="sluicegate-tests-")
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
_URL = re.compile(r"listening on (http://\S+)")


class Proc:
    def __init__(self, args: list[str], env: dict[str, str] | None = None, stderr: int | None = None) -> None:
        """stderr: the log file (read_log) by default; subprocess.PIPE gives a pipe that nobody reads."""
        self.log = tempfile.NamedTemporaryFile(prefix="sluicegate-test-", suffix=".log", dir=SCRATCH, delete=False)  # noqa: SIM115
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "sluicegate", *args], stdout=subprocess.PIPE,
            stderr=self.log if stderr is None else stderr, env=full_env, text=True,
        )
        self.url = self._wait_ready()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _wait_ready(self) -> str:
        assert self.popen.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.popen.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + READY_TIMEOUT
        seen = ""
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if self.popen.poll() is not None:
                    break
                continue
            line = self.popen.stdout.readline()
            if not line:
                break
            seen += line
            match = _URL.search(line)
            if match:
                return match.group(1)
        self.stop()
        raise RuntimeError(f"process did not become ready: {self.popen.args}\nstdout: {seen}\nlog: {self.read_log()}")

    def read_log(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def start_mock(*extra: str) -> Proc:
    return Proc(["mock-upstream", "--port", "0", *extra])


def start_gateway(config: dict[str, Any] | None, env: dict[str, str] | None = None, *extra: str,
                  stderr: int | None = None) -> Proc:
    """config=None runs the embedded default."""
    args = ["serve", "--port", "0", *extra]
    env = {"SLUICEGATE_USAGE_DSN": tempfile.mktemp(prefix="sluicegate-usage-", suffix=".db", dir=SCRATCH),
           **(env or {})}
    if config is not None:
        config = {**config, "server": {"host": "127.0.0.1", "port": 0, **config.get("server", {})}}
        if "usage" not in config:
            config["usage"] = {"dsn": tempfile.mktemp(prefix="sluicegate-usage-", suffix=".db", dir=SCRATCH)}
        with tempfile.NamedTemporaryFile("w", prefix="sluicegate-", suffix=".yaml", dir=SCRATCH, delete=False) as f:
            yaml.safe_dump(config, f)
        args += ["--config", f.name]
    return Proc(args, env, stderr)


def one_model(api_base: str, name: str = "m", **model: Any) -> dict[str, Any]:
    """A config with one model served by one OpenAI-compatible deployment."""
    deployment = {"provider": "openai", "api_base": api_base, "model": "mock-model", **model.pop("deployment", {})}
    server = model.pop("server", {})
    return {"server": server, "models": [{"name": name, "deployments": [deployment], **model}]}
