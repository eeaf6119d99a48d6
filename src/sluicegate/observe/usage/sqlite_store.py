"""Usage records in a SQLite file: the embedded default.

SQLite calls block, so each runs in a worker thread (`asyncio.to_thread`), one at a time per connection. WAL
mode lets the reader connection run beside the writer, and several processes (gunicorn workers) may write the
same file: a writer waits for the file lock up to `busy_timeout`, and `BEGIN IMMEDIATE` takes that lock up
front so the wait happens there, not as a failed lock upgrade in the middle of a transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from .record import USAGE_COLUMNS, Outcome, UsageRecord, record_from_row, record_to_row
from .schema import RECORDS_TABLE, VERSION_TABLE, pending_migrations
from .store import (
    UsageAggregate,
    UsageRecordsRejected,
    UsageStoreUnavailable,
    percentile_cont,
    sorted_aggregates,
)

_T = TypeVar("_T")

_COLUMN_LIST: Final = ", ".join(USAGE_COLUMNS)
_INSERT: Final = (
    f"INSERT INTO {RECORDS_TABLE} ({_COLUMN_LIST}) VALUES ({', '.join('?' for _ in USAGE_COLUMNS)})"
    " ON CONFLICT (request_id) DO NOTHING"
)
_SELECT_ONE: Final = f"SELECT {_COLUMN_LIST} FROM {RECORDS_TABLE} WHERE request_id = ?"
_PERCENTILE_FUNCTION: Final = "sluicegate_percentile_cont"

# Errors from an INSERT caused by a record's values (STRICT type check, NOT NULL, unbindable or oversized
# value); any other error is about the database itself and worth retrying.
_RECORD_ERRORS: Final = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError, OverflowError)


class _PercentileCont:
    """SQLite has no percentile aggregate; this one collects the group's values and interpolates like
    PostgreSQL's `percentile_cont`, so the aggregate query has the same shape in both stores."""

    def __init__(self) -> None:
        self._values: list[float] = []
        self._fraction = 0.5

    def step(self, value: float | None, fraction: float) -> None:
        if value is not None:
            self._values.append(value)
        self._fraction = fraction

    def finalize(self) -> float | None:
        self._values.sort()
        return percentile_cont(self._values, self._fraction)


class _ThreadedConnection:
    """One lazily opened connection whose calls run in a worker thread, one at a time. After a database
    error the connection is closed, so the next call reopens it (and re-runs its setup: the schema check)."""

    def __init__(self, describe: str, open_connection: Callable[[], sqlite3.Connection]) -> None:
        self._describe = describe
        self._open = open_connection
        self._connection: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def run(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        async with self._lock:
            call = asyncio.ensure_future(asyncio.to_thread(self._call, operation))
            try:
                return await asyncio.shield(call)
            except asyncio.CancelledError:
                # A thread cannot be stopped: keep the connection locked until it is done with it.
                await asyncio.wait({call})
                if not call.cancelled() and call.exception() is not None:
                    self._close()
                raise
            except sqlite3.Error as exc:
                await asyncio.to_thread(self._close)
                raise UsageStoreUnavailable(f"{self._describe}: {exc}") from exc

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._close)

    def _call(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._connection is None:
            self._connection = self._open()
        return operation(self._connection)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class SQLiteUsageStore:
    """Usage records in one SQLite file (created with its folder if missing)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        describe = f"SQLite usage store {self.path}"
        self._writer = _ThreadedConnection(describe, self._open_writer)
        self._reader = _ThreadedConnection(describe, self._open_reader)

    async def start(self) -> None:
        await self._writer.run(lambda connection: None)

    async def write_batch(self, records: Sequence[UsageRecord]) -> None:
        rows = [record_to_row(record) for record in records]
        await self._writer.run(lambda connection: _insert(connection, rows))

    async def get(self, request_id: str) -> UsageRecord | None:
        row = await self._reader.run(lambda connection: connection.execute(_SELECT_ONE, (request_id,)).fetchone())
        return None if row is None else record_from_row(row)

    async def aggregate(
        self, key: str | None = None, model: str | None = None, since: float | None = None
    ) -> list[UsageAggregate]:
        query, params = _aggregate_query(key, model, since)
        rows = await self._reader.run(lambda connection: connection.execute(query, params).fetchall())
        return sorted_aggregates(
            UsageAggregate(
                model=row[0],
                key_name=row[1],
                requests=row[2],
                errors=row[3],
                prompt_tokens=row[4],
                completion_tokens=row[5],
                ttft_p50_s=row[6],
                ttft_p95_s=row[7],
            )
            for row in rows
        )

    async def close(self) -> None:
        await self._writer.close()
        await self._reader.close()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; writes open their own with BEGIN IMMEDIATE.
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._enable_wal(connection)
            # NORMAL in WAL mode survives a process crash; only an OS crash may lose the last batches.
            connection.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            connection.close()
            raise
        return connection

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs an exclusive lock and fails at once, without the busy handler, when
        # another process holds any lock (several workers starting together): retry up to the busy timeout.
        if connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def _open_writer(self) -> sqlite3.Connection:
        connection = self._connect()
        try:
            _migrate(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _open_reader(self) -> sqlite3.Connection:
        connection = self._connect()
        # create_aggregate is typed for a one-argument aggregate; ours takes (value, fraction).
        aggregate_class: Any = _PercentileCont
        connection.create_aggregate(_PERCENTILE_FUNCTION, 2, aggregate_class)
        return connection


def _insert(connection: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.executemany(_INSERT, rows)
    except _RECORD_ERRORS as exc:
        _rollback(connection)
        raise UsageRecordsRejected(str(exc)) from exc
    except BaseException:
        _rollback(connection)
        raise
    connection.execute("COMMIT")


def _rollback(connection: sqlite3.Connection) -> None:
    # Some errors (I/O, full disk) make SQLite roll back by itself; a second ROLLBACK would mask the cause.
    if connection.in_transaction:
        connection.execute("ROLLBACK")


def _migrate(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")  # serialises the starts of several processes
    try:
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        (current,) = connection.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}").fetchone()
        for migration in pending_migrations(current):
            for statement in migration.sqlite:
                connection.execute(statement)
            connection.execute(
                f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (?, ?)",
                (migration.version, time.time()),
            )
    except BaseException:
        _rollback(connection)
        raise
    connection.execute("COMMIT")


def _aggregate_query(key: str | None, model: str | None, since: float | None) -> tuple[str, tuple[object, ...]]:
    conditions: list[str] = []
    params: list[object] = [Outcome.COMPLETED]
    if key is not None:
        conditions.append("key_name = ?")
        params.append(key)
    if model is not None:
        conditions.append("model = ?")
        params.append(model)
    if since is not None:
        conditions.append("ts >= ?")
        params.append(since)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    query = (
        "SELECT model, key_name, COUNT(*),"
        " SUM(CASE WHEN outcome <> ? THEN 1 ELSE 0 END),"
        " COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),"
        f" {_PERCENTILE_FUNCTION}(ttft_s, 0.5), {_PERCENTILE_FUNCTION}(ttft_s, 0.95)"
        f" FROM {RECORDS_TABLE} {where} GROUP BY model, key_name"
    )
    return query, tuple(params)
