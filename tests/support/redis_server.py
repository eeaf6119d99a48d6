"""A Redis for tests: the one named by SLUICEGATE_TEST_REDIS_URL, or a private redis-server we start and stop.

The private server listens on a free 127.0.0.1 port, keeps nothing on disk (`--save "" --appendonly no`, its own
temp dir) and is killed at the end. No redis-server binary and no URL is an error that says what to install,
never a silent skip. Tests that share a Redis isolate themselves by key prefix; nothing here flushes a Redis.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

URL_ENV = "SLUICEGATE_TEST_REDIS_URL"
READY_TIMEOUT = 10.0
START_ATTEMPTS = 3


class RedisServerMissing(RuntimeError):
    """No Redis to test against: neither SLUICEGATE_TEST_REDIS_URL nor a redis-server binary."""


def find_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissing(
            "these tests need a real Redis: no redis-server on PATH and SLUICEGATE_TEST_REDIS_URL is not set. "
            "Install it (Debian/Ubuntu: apt-get install redis-server) or point "
            "SLUICEGATE_TEST_REDIS_URL at a Redis you can use, e.g. redis://127.0.0.1:6379/15"
        )
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private redis-server process. `stop()` and `start()` may be repeated (same port, empty data)."""

    def __init__(self, port: int | None = None) -> None:
        self._binary = find_redis_server()
        self._dir = tempfile.mkdtemp(prefix="sluicegate-redis-")
        self.port = port if port is not None else free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log_path = Path(self._dir) / "redis.log"
        args = [
            self._binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--logfile", str(log_path),
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if answers_ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1:{self.port}\n{log}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def start_redis_server(port: int | None = None) -> RedisServer:
    """Start a private redis-server (on a free port unless `port` is given); retries if the port was taken."""
    last_error: Exception | None = None
    for _ in range(START_ATTEMPTS if port is None else 1):
        server = RedisServer(port)
        try:
            server.start()
        except RuntimeError as exc:
            server.cleanup()
            last_error = exc
            continue
        return server
    raise RuntimeError(f"could not start a private redis-server: {last_error}")


def stop_redis_server(server: RedisServer) -> None:
    server.cleanup()


@contextlib.contextmanager
def private_redis_server(port: int | None = None) -> Iterator[RedisServer]:
    """Always a private server (for tests that stop and restart Redis), whatever the environment says."""
    server = start_redis_server(port)
    try:
        yield server
    finally:
        stop_redis_server(server)


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """SLUICEGATE_TEST_REDIS_URL if set, else the URL of a private server that lives for the block."""
    configured = os.environ.get(URL_ENV)
    if configured:
        yield configured
        return
    with private_redis_server() as server:
        yield server.url
