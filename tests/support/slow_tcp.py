"""A TCP proxy on 127.0.0.1 whose answers can be held back: `delay` seconds on every byte the target sends to the
client (requests pass at once). Runs in the test's event loop; for making a real server (Redis) answer late at a
chosen moment, so that races between an answer and a timer happen on purpose."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class SlowAnswers:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SlowAnswers:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
                        ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connected(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_writer, target_writer]
        for task in (asyncio.create_task(self._pipe(client_reader, target_writer, delayed=False)),
                     asyncio.create_task(self._pipe(target_reader, client_writer, delayed=True))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool) -> None:
        loop = asyncio.get_running_loop()
        not_before = 0.0  # bytes leave in the order they came, whatever the delay was when each arrived
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if delayed:
                    not_before = max(not_before, loop.time() + self.delay)
                    loop.call_at(not_before, self._write, writer, data)
                else:
                    writer.write(data)
        loop.call_at(not_before, writer.close)

    @staticmethod
    def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
        if not writer.is_closing():
            writer.write(data)
