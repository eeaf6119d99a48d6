"""CPU time used by other processes, read from /proc/PID/stat (utime + stime, summed over all threads)."""

from __future__ import annotations

import os

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

# Fields after the ")" that closes the command name: state is field 3, utime field 14, stime field 15.
_UTIME = 14 - 3
_STIME = 15 - 3


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` so far; None if the process is gone or unreadable.

    Resolution is one clock tick (usually 10 ms), so runs should last long enough to use many ticks.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return (int(fields[_UTIME]) + int(fields[_STIME])) / _TICKS_PER_S
    except (IndexError, ValueError):
        return None


def process_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}/stat")
