"""Every stall of one stream has a deadline, enforced by ONE lazily re-armed loop timer.

Per event the pump only stores a timestamp (`last_upstream`); nothing is scheduled or cancelled. The timer wakes at
the earliest deadline that could have passed, re-computes from the timestamps, and either fires or re-arms itself
for the new earliest time. A quiet stream costs one wake-up per idle period; a busy stream costs nothing per event.

Firing cancels the stream's task and records which deadline it was (`fired`); the code that owns the task turns
that cancellation into the right outcome (see `Task.uncancel`, as `asyncio.timeout` does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import Enum

from sluicegate.config.schema import TimeoutsConfig
from sluicegate.types import GatewayError, Outcome

_NEVER = float("inf")


class Phase(Enum):
    WAITING = 0  # request sent (or being sent); no event yet
    STREAMING = 1  # committed: events are flowing to the client
    DONE = 2


class StreamDeadlines:
    __slots__ = (
        "_handle",
        "_hb_before_first",
        "_hb_interval",
        "_heartbeat",
        "_loop",
        "_task",
        "_timeouts",
        "_total_at",
        "_when",
        "_write_stalled_since",
        "fired",
        "first_chunk_at",
        "last_ping",
        "last_upstream",
        "phase",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        task: asyncio.Task[object],
        timeouts: TimeoutsConfig,
        *,
        heartbeat_interval: float = 0.0,
        heartbeat_before_first_chunk: bool = False,
        send_heartbeat: Callable[[], None] | None = None,
        write_stalled_since: Callable[[], float] | None = None,
    ) -> None:
        self._loop = loop
        self._task = task
        self._timeouts = timeouts
        self._hb_interval = heartbeat_interval if send_heartbeat is not None else 0.0
        self._hb_before_first = heartbeat_before_first_chunk
        self._heartbeat = send_heartbeat
        self._write_stalled_since = write_stalled_since
        self._handle: asyncio.TimerHandle | None = None
        self._when = _NEVER
        self._total_at = _NEVER
        self.first_chunk_at = _NEVER
        self.phase = Phase.WAITING
        self.fired: Outcome | None = None
        self.last_upstream = 0.0
        self.last_ping = 0.0

    # --- phases -------------------------------------------------------------------------------------------------
    def start(self, now: float, *, total: float) -> None:
        """The request arrived: the total deadline runs from here."""
        self._total_at = now + total
        self.last_ping = now
        self._arm(self._total_at)

    def waiting_for_first_chunk(self, now: float, timeout: float) -> None:
        """An attempt sent its request: its first complete event is due within `timeout`."""
        self.phase = Phase.WAITING
        self.first_chunk_at = now + timeout
        self._arm(self._next_wakeup(now))

    def attempt_failed(self, now: float) -> None:
        """An attempt ended before its first event: its first-chunk deadline ends with it (also one that just fired).
        Until the next attempt sends its request (after a backoff, perhaps a wait for a slot) only `total` runs."""
        if self.fired is not None and self.fired is not Outcome.TIMEOUT_FIRST_CHUNK:
            return  # the request's own deadline fired: it ends, whatever the attempt said
        self.fired = None
        self.phase = Phase.WAITING
        self.first_chunk_at = _NEVER
        self._arm(self._next_wakeup(now))

    def adopt(self, timeouts: TimeoutsConfig, started: float) -> None:
        """The deployment that won has its own deadlines (per-deployment overrides): use them from now on."""
        if timeouts is not self._timeouts:
            self._timeouts = timeouts
            self._total_at = started + timeouts.total

    def streaming(self, now: float) -> None:
        """The first event went out: from now on the idle gap and write stalls are watched."""
        self.phase = Phase.STREAMING
        self.first_chunk_at = _NEVER
        self.last_upstream = now
        self.last_ping = now
        self._arm(self._next_wakeup(now))

    def write_stalled(self, now: float) -> None:
        """A write began waiting for the client to drain (slow path only): make sure we wake at its deadline."""
        if self.phase is Phase.STREAMING:
            self._arm(now + self._timeouts.write_stall)

    def stop(self) -> None:
        self.phase = Phase.DONE
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._when = _NEVER

    # --- the timer ----------------------------------------------------------------------------------------------
    def _arm(self, when: float) -> None:
        if when >= self._when and self._handle is not None:
            return  # the pending wake-up comes first and will re-arm
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._check) if when != _NEVER else None

    def _stalled_since(self) -> float:
        return self._write_stalled_since() if self._write_stalled_since is not None else 0.0

    def _next_wakeup(self, now: float) -> float:
        t = self._timeouts
        candidates = [self._total_at]
        if self.phase is Phase.WAITING:
            candidates.append(self.first_chunk_at)
            if self._hb_before_first and self._hb_interval:
                candidates.append(self.last_ping + self._hb_interval)
        elif self.phase is Phase.STREAMING:
            stalled = self._stalled_since()
            if stalled:
                candidates.append(stalled + t.write_stall)
            else:
                candidates.append(self.last_upstream + t.idle)
                if self._hb_interval:
                    candidates.append(max(self.last_upstream, self.last_ping) + self._hb_interval)
        return min(candidates)

    def _check(self) -> None:
        self._handle = None
        self._when = _NEVER
        if self.phase is Phase.DONE or self.fired is not None:
            return
        now = self._loop.time()
        expired = self._expired(now)
        if expired is not None:
            self.fired = expired
            self.phase = Phase.DONE
            self._task.cancel()
            return
        if self._heartbeat is not None and self._hb_interval and self._heartbeat_due(now):
            self.last_ping = now
            self._heartbeat()
        self._arm(self._next_wakeup(now))

    def _expired(self, now: float) -> Outcome | None:
        t = self._timeouts
        if now >= self._total_at:
            return Outcome.TIMEOUT_TOTAL
        if self.phase is Phase.WAITING:
            return Outcome.TIMEOUT_FIRST_CHUNK if now >= self.first_chunk_at else None
        stalled = self._stalled_since()
        if stalled:
            return Outcome.WRITE_STALL if now - stalled >= t.write_stall else None
        if now - self.last_upstream >= t.idle:
            return Outcome.TIMEOUT_IDLE
        return None

    def _heartbeat_due(self, now: float) -> bool:
        if self.phase is Phase.WAITING:
            return self._hb_before_first and now - self.last_ping >= self._hb_interval
        if self._stalled_since():
            return False  # the client is not draining; a ping would only add to the backlog
        return now - max(self.last_upstream, self.last_ping) >= self._hb_interval


_DEADLINE_MESSAGES = {
    Outcome.TIMEOUT_FIRST_CHUNK: "The upstream sent no event within the first-chunk deadline ({:g}s).",
    Outcome.TIMEOUT_IDLE: "The upstream sent nothing for longer than the idle deadline ({:g}s).",
    Outcome.TIMEOUT_TOTAL: "The stream ran longer than the total deadline ({:g}s).",
    Outcome.WRITE_STALL: "The client did not read for longer than the write-stall deadline ({:g}s).",
}


def _deadline_seconds(outcome: Outcome, t: TimeoutsConfig) -> float:
    return {
        Outcome.TIMEOUT_FIRST_CHUNK: t.first_chunk, Outcome.TIMEOUT_IDLE: t.idle, Outcome.TIMEOUT_TOTAL: t.total,
        Outcome.WRITE_STALL: t.write_stall,
    }.get(outcome, 0.0)


def deadline_error(outcome: Outcome, timeouts: TimeoutsConfig) -> GatewayError:
    message = _DEADLINE_MESSAGES.get(outcome, "A deadline passed ({:g}s).").format(_deadline_seconds(outcome, timeouts))
    return GatewayError(504, message, type="timeout", code=outcome.value, outcome=outcome)
