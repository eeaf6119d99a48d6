"""The client side of a stream, in memory (what `gateway.client_stream.ClientStream` asks for): every write is
accepted at once and counted. For tests and benchmarks of the pump alone; stream behaviour is tested over sockets."""

from __future__ import annotations


class MemoryClient:
    committed = True
    stalled_since = 0.0
    on_stall = None

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.bytes_sent = 0

    async def write(self, data: bytes) -> None:
        self.bytes_sent += len(data)  # not through send(): the pump benchmark times this as a bare write

    def send(self, data: bytes) -> bool:
        self.bytes_sent += len(data)
        return False  # never over the high-water mark

    async def drain(self) -> None:
        pass

    def digest(self) -> str:
        return ""

    def heartbeat(self) -> None:
        pass

    async def end(self, final: bytes = b"", *, clean: bool = True) -> None:
        pass
