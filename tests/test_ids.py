"""Request ids: 32 hex digits, unique, ordered by time, and never shared between a forked worker and its parent."""

from __future__ import annotations

import os
import re
import time

from sluicegate.ids import new_id


def test_ids_are_32_hex_digits_unique_and_led_by_the_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(50_000)]  # crosses many of the random blocks read at once
    after = time.time_ns() // 1_000_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    stamps = [int(i[:12], 16) for i in ids]
    assert before <= min(stamps) and max(stamps) <= after
    assert stamps == sorted(stamps)


def test_a_forked_child_does_not_repeat_its_parents_random_bytes() -> None:
    new_id()  # the parent has a block of random bytes in hand
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, "".join(new_id()[12:] for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as reader:
        child = reader.read()
    parent = "".join(new_id()[12:] for _ in range(100))
    child_parts = {child[i : i + 20] for i in range(0, len(child), 20)}
    assert len(child_parts) == 100 and not child_parts & {parent[i : i + 20] for i in range(0, len(parent), 20)}
