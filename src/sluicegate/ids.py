"""Request ids: unique, unguessable, time-ordered, cheap.

32 hex digits, as uuid4's: 48 bits of Unix milliseconds, then 80 random bits (UUIDv7's layout, without its version
bits). Time first, so the usage store's primary key grows at its end: a random key puts every insert on a random
page of the index, which once the table outgrows SQLite's page cache costs a page read per insert (measured: 44 µs
of the writer thread per request with a 26 MB table, 15 to 20 with time-ordered keys; docs/benchmarks.md).

The random part is read from the OS in blocks, not a system call per id; a forked worker starts with its own block
(`os.register_at_fork`), so no two processes hand out the same bytes.
"""

from __future__ import annotations

import os
import time

_BLOCK = 4096  # random bytes read at once: 409 ids per os.urandom call
_RANDOM_BYTES = 10


class _RandomBlock:
    __slots__ = ("data", "offset")

    def __init__(self) -> None:
        self.data = b""
        self.offset = _BLOCK

    def take(self) -> bytes:
        offset = self.offset
        if offset + _RANDOM_BYTES > len(self.data):
            self.data = os.urandom(_BLOCK)
            offset = 0
        self.offset = offset + _RANDOM_BYTES
        return self.data[offset : offset + _RANDOM_BYTES]

    def discard(self) -> None:
        self.data = b""
        self.offset = _BLOCK


_random = _RandomBlock()
os.register_at_fork(after_in_child=_random.discard)


def new_id() -> str:
    """A new request id (32 lowercase hex digits); ids made later sort after earlier ones, to the millisecond.
    Call it from the event loop's thread: the block's offset is not guarded against other threads."""
    return f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}{_random.take().hex()}"
