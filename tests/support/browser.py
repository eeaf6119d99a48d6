"""A real headless Chromium for tests, driven over the Chrome DevTools Protocol (a small client on aiohttp).

Debian's `chromium` is required: without it `find_chromium` raises ChromiumMissing with what to install, and the
tests that need it fail (never skip). Each browser gets a fresh profile directory and is killed at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_ENV = "SLUICEGATE_TEST_CHROMIUM"
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
)
START_TIMEOUT = 20.0
COMMAND_TIMEOUT = 15.0


class ChromiumMissing(RuntimeError):
    """No Chromium binary to drive."""


class CdpError(RuntimeError):
    """A DevTools command answered with an error, or the browser did not answer in time."""


def find_chromium() -> str:
    configured = os.environ.get(CHROMIUM_ENV)
    candidates = (configured,) if configured else CANDIDATES
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise ChromiumMissing(
        "this test needs a real headless Chromium and none was found "
        f"(looked for {', '.join(candidates)}; {CHROMIUM_ENV} names another binary). "
        "Install it: apt-get update && apt-get install -y chromium"
    )


class Page:
    """One tab, attached with a flat session on the browser's DevTools websocket."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self._browser = browser
        self._session_id = session_id

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._browser.send(method, params, session_id=self._session_id)

    async def goto(self, url: str) -> None:
        loaded = self._browser.expect_event("Page.loadEventFired", self._session_id)
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {result['errorText']}")
        try:
            await asyncio.wait_for(loaded, COMMAND_TIMEOUT)
        except TimeoutError:
            raise CdpError(f"{url} did not finish loading within {COMMAND_TIMEOUT} s") from None

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        })
        if "exceptionDetails" in result:
            raise CdpError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def text(self, selector: str) -> str | None:
        """The text of the first element matching `selector`, None if there is none."""
        value = await self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)}); "
            f"return el ? el.textContent.trim() : null; }})()"
        )
        return None if value is None else str(value)

    async def wait_for(self, expression: str, within: float = 10.0, interval: float = 0.1) -> Any:
        """Polls a JS expression until it is truthy; returns its last value (falsy if `within` seconds passed)."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            value = await self.evaluate(expression)
            if value or asyncio.get_running_loop().time() > deadline:
                return value
            await asyncio.sleep(interval)

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        await asyncio.to_thread(_write_file, path, base64.b64decode(result["data"]))
        return path


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Browser:
    def __init__(self, process: asyncio.subprocess.Process, profile: Path, log: Path) -> None:
        self.process = process
        self.profile = profile
        self.log = log
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []

    async def connect(self) -> None:
        url = await self._devtools_url()
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _devtools_url(self) -> str:
        """Chromium writes its port and websocket path to DevToolsActivePort in the profile once it listens."""
        marker = self.profile / "DevToolsActivePort"
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            if self.process.returncode is not None:
                raise ChromiumMissing(f"chromium exited with {self.process.returncode}: {self.read_log()[-2000:]}")
            with contextlib.suppress(FileNotFoundError):
                lines = marker.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            await asyncio.sleep(0.05)
        raise CdpError(f"chromium did not open its DevTools port in {START_TIMEOUT} s: {self.read_log()[-2000:]}")

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(CdpError(str(data["error"])))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            for waiter in list(self._waiters):
                method, session_id, future = waiter
                if data.get("method") == method and session_id in (None, data.get("sessionId")):
                    self._waiters.remove(waiter)
                    if not future.done():
                        future.set_result(data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the DevTools connection closed"))

    def expect_event(self, method: str, session_id: str | None = None) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session_id, future))
        return future

    async def send(self, method: str, params: dict[str, Any] | None = None, *,
                   session_id: str | None = None) -> dict[str, Any]:
        assert self._ws is not None
        command_id = next(self._ids)
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        await self._ws.send_str(json.dumps(message))
        try:
            return await asyncio.wait_for(future, COMMAND_TIMEOUT)
        except TimeoutError:
            raise CdpError(f"no answer to {method} within {COMMAND_TIMEOUT} s") from None
        finally:
            self._pending.pop(command_id, None)

    async def new_page(self, width: int = 1400, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False,
        })
        return page

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send("Browser.close"), 3)
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._session is not None:
            await self._session.close()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        # Renderer and helper processes share the browser's own process group: end any that outlived it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def launch_chromium() -> AsyncIterator[Browser]:
    """A fresh headless Chromium (own profile dir, DevTools on a free 127.0.0.1 port), killed on exit."""
    binary = find_chromium()
    profile = Path(tempfile.mkdtemp(prefix="sluicegate-chromium-"))
    log = profile.parent / f"{profile.name}.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            binary, *FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    browser = Browser(process, profile, log)
    try:
        await browser.connect()
        yield browser
    finally:
        await browser.close()
        await _remove(profile, log)


async def _remove(profile: Path, log: Path) -> None:
    """Removes the profile; helpers that are still exiting may write into it for a moment, so try a few times."""
    for _ in range(5):
        if await asyncio.to_thread(_remove_now, profile, log):
            return
        await asyncio.sleep(0.2)


def _remove_now(profile: Path, log: Path) -> bool:
    shutil.rmtree(profile, ignore_errors=True)
    log.unlink(missing_ok=True)
    return not profile.exists()
