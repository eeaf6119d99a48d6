"""The built-in demo model: the mock upstream, run inside the gateway process on a private loopback port, so the
embedded default streams a real reply through the real proxy path with no config and no API key."""

from __future__ import annotations

from sluicegate.mock.behaviour import MockBehaviour
from sluicegate.mock.server import MockUpstream

DEMO_TEXT = (
    "Hello from sluicegate! This reply is streamed token by token from the built-in demo model, through the "
    "same proxy path your real upstreams use: no buffering, one flush per event, a deadline for every stall. "
    "Point a config file at your own model servers to serve them under any public model name."
)


class DemoUpstream:
    def __init__(self) -> None:
        self._mock = MockUpstream(defaults=MockBehaviour(interval=0.03, text=DEMO_TEXT))
        self.api_base = ""

    async def start(self) -> None:
        port = await self._mock.start("127.0.0.1", 0)
        self.api_base = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        await self._mock.stop()
