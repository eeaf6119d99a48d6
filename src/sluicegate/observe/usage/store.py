"""What every usage store offers, and the pieces the stores share."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol, TypedDict

from .record import UsageRecord


class UsageStoreUnavailable(Exception):
    """The store could not be reached or was busy (connection lost, database locked, disk full...).

    The same call may succeed later: the recorder keeps the batch and retries (it treats any exception from
    `write_batch` other than `UsageRecordsRejected` this way).
    """


class UsageRecordsRejected(Exception):
    """The database refused the values of a record in the batch (wrong type, out of range, NULL where not
    allowed). Retrying the same batch cannot succeed; the recorder retries its records one at a time and drops
    only those that are refused on their own."""


class UsageAggregate(TypedDict):
    """One row of `UsageStore.aggregate`: totals for one (model, key_name) pair."""

    model: str
    key_name: str | None
    requests: int
    errors: int
    """Requests whose outcome is not `completed`."""
    prompt_tokens: int
    completion_tokens: int
    ttft_p50_s: float | None
    """Over the requests that have a TTFT (those that sent a first token); None when there are none."""
    ttft_p95_s: float | None


class UsageStore(Protocol):
    """Durable home of usage records. Every method may raise `UsageStoreUnavailable`; `write_batch` may also
    raise `UsageRecordsRejected`."""

    async def start(self) -> None:
        """Connect and create or migrate the schema. Idempotent; safe from several processes at once."""

    async def write_batch(self, records: Sequence[UsageRecord]) -> None:
        """Write the records in one transaction. A request_id already stored is left as it is, so a batch that
        is retried after an unknown outcome (connection lost during commit) is never stored twice."""

    async def get(self, request_id: str) -> UsageRecord | None: ...

    async def aggregate(
        self, key: str | None = None, model: str | None = None, since: float | None = None
    ) -> list[UsageAggregate]:
        """Totals per (model, key_name), optionally filtered by key name, model and `ts >= since`.
        Sorted by model, then key_name with None first."""

    async def close(self) -> None: ...


def percentile_cont(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Linear-interpolated percentile, the same definition and arithmetic as PostgreSQL's `percentile_cont`,
    so both stores return identical numbers."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = math.ceil(position)
    low_value = sorted_values[lower]
    if lower == upper:
        return low_value
    return low_value + (position - lower) * (sorted_values[upper] - low_value)


def sorted_aggregates(rows: Iterable[UsageAggregate]) -> list[UsageAggregate]:
    """Order rows the same way in every store (SQL NULL ordering differs between databases)."""
    return sorted(rows, key=lambda row: (row["model"], row["key_name"] is not None, row["key_name"] or ""))
