"""The usage record: one per request, written exactly once whatever path ended the request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import msgspec


class Outcome:
    """Known values of `UsageRecord.outcome`.

    The field stays a plain `str` (not an enum) so a new outcome needs neither a migration nor a release of
    the reader, and so database drivers bind it without adapters.
    """

    COMPLETED: Final = "completed"
    CLIENT_DISCONNECTED: Final = "client_disconnected"
    UPSTREAM_ERROR: Final = "upstream_error"
    TIMEOUT_CONNECT: Final = "timeout_connect"
    TIMEOUT_FIRST_CHUNK: Final = "timeout_first_chunk"
    TIMEOUT_IDLE: Final = "timeout_idle"
    TIMEOUT_TOTAL: Final = "timeout_total"
    WRITE_STALL: Final = "write_stall"
    TIMEOUT_REQUEST: Final = "timeout_request"
    SHED: Final = "shed"
    SHUTDOWN: Final = "shutdown"
    REJECTED: Final = "rejected"
    INVALID: Final = "invalid"
    ERROR: Final = "error"


# gc=False: every field is a scalar, so records can never be part of a reference cycle; keeping 10k queued
# records out of the cyclic GC's lists saves collector time on the hot path's process.
class UsageRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one request cost and how it went. Field order is the column order in every store."""

    request_id: str
    ts: float
    """Unix seconds when the request started (arrived at the gateway)."""
    key_name: str | None = None
    model: str
    """The public model name the client asked for."""
    deployment: str | None = None
    """The deployment that served the last attempt; None if no attempt was made."""
    endpoint: str
    attempts: int = 0
    status: int
    """The HTTP status the client received."""
    outcome: str
    ttft_s: float | None = None
    itl_mean_s: float | None = None
    itl_p95_s: float | None = None
    duration_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    bytes_sent: int = 0
    client_disconnected: bool = False
    sha256: str | None = None
    """Hex SHA-256 of the exact bytes sent to the client (body, not headers)."""
    stream: bool = False
    client_request_id: str | None = None
    """The id the client sent in x-client-request-id or x-request-id, if any (not unique: clients choose it)."""


USAGE_COLUMNS: Final[tuple[str, ...]] = UsageRecord.__struct_fields__


def record_to_row(record: UsageRecord) -> tuple[object, ...]:
    """The record's values in `USAGE_COLUMNS` order, ready to bind as SQL parameters."""
    return msgspec.structs.astuple(record)


def record_from_row(row: Sequence[object]) -> UsageRecord:
    """Rebuild a record from values in `USAGE_COLUMNS` order.

    Lenient conversion so stores without a boolean type (SQLite's 0/1) read back as `bool`; it still refuses
    values of the wrong kind, so a corrupted row raises instead of yielding a wrong record.
    """
    fields: Mapping[str, object] = dict(zip(USAGE_COLUMNS, row, strict=True))
    return msgspec.convert(fields, UsageRecord, strict=False)
