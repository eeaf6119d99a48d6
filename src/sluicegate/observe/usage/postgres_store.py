"""Usage records in PostgreSQL, for deployments with several gateways or long retention.

Two connections per store, each used by one operation at a time: the writer (batches) and the reader
(admin queries), so a slow aggregate never holds up the flush. A connection that fails is closed and reopened
on the next call; the writer re-checks the schema each time it connects. Every call is bounded by
`op_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

import psycopg
import psycopg.errors
from psycopg.rows import TupleRow

from .record import USAGE_COLUMNS, Outcome, UsageRecord, record_from_row, record_to_row
from .schema import RECORDS_TABLE, VERSION_TABLE, pending_migrations
from .store import UsageAggregate, UsageRecordsRejected, UsageStoreUnavailable, sorted_aggregates

_T = TypeVar("_T")
_Connection = psycopg.AsyncConnection[TupleRow]

# Server errors caused by a record's values (bad text for a number, out of range, NULL where not allowed,
# a float bound to an integer column).
_RECORD_ERRORS: Final = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.DatatypeMismatch)


class _ReconnectingConnection:
    def __init__(
        self,
        conninfo: str,
        *,
        describe: str,
        connect_timeout: float,
        op_timeout: float,
        prepared_statements: bool = True,
        on_connect: Callable[[_Connection], Awaitable[None]] | None = None,
    ) -> None:
        self._conninfo = conninfo
        # psycopg prepares a statement on the server after 5 runs; None never does (poolers in transaction mode
        # hand each transaction to any server connection, where the prepared statement does not exist).
        self._prepare_threshold: int | None = 5 if prepared_statements else None
        self._describe = describe
        self._connect_timeout = connect_timeout
        self._op_timeout = op_timeout
        self._on_connect = on_connect
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()

    async def run(self, operation: Callable[[_Connection], Awaitable[_T]]) -> _T:
        async with self._lock:
            try:
                async with asyncio.timeout(self._op_timeout):
                    return await operation(await self._connected())
            except UsageRecordsRejected:
                raise
            except asyncio.CancelledError:
                await self._discard()  # an interrupted exchange leaves the connection in an unknown state
                raise
            except (psycopg.Error, OSError, TimeoutError) as exc:
                await self._discard()
                reason = f"no answer within {self._op_timeout} s" if isinstance(exc, TimeoutError) else str(exc)
                raise UsageStoreUnavailable(f"{self._describe}: {reason}") from exc

    async def close(self) -> None:
        async with self._lock:
            await self._discard()

    async def _connected(self) -> _Connection:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        connection = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=max(1, round(self._connect_timeout)),
            prepare_threshold=self._prepare_threshold,
        )
        try:
            if self._on_connect is not None:
                await self._on_connect(connection)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        return connection

    async def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


class PostgresUsageStore:
    """Usage records in a PostgreSQL database.

    `dsn` is any libpq connection string or URI. `schema`: where the tables live (created if missing); None
    uses the connection's search_path. `prepared_statements=False` for a pooler in transaction mode (PgBouncer
    before 1.21, or without max_prepared_statements).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        connect_timeout: float = 5.0,
        op_timeout: float = 30.0,
        prepared_statements: bool = True,
    ) -> None:
        self._schema = schema
        self._prefix = "" if schema is None else f"{_quote_identifier(schema)}."
        records = f"{self._prefix}{RECORDS_TABLE}"
        columns = ", ".join(USAGE_COLUMNS)
        self._insert_sql = (
            f"INSERT INTO {records} ({columns}) VALUES ({', '.join('%s' for _ in USAGE_COLUMNS)})"
            " ON CONFLICT (request_id) DO NOTHING"
        )
        self._select_one_sql = f"SELECT {columns} FROM {records} WHERE request_id = %s"
        self._records_table = records
        describe = "PostgreSQL usage store" + ("" if schema is None else f" (schema {schema})")
        self._writer = _ReconnectingConnection(
            dsn,
            describe=describe,
            connect_timeout=connect_timeout,
            op_timeout=op_timeout,
            prepared_statements=prepared_statements,
            on_connect=self._migrate,
        )
        self._reader = _ReconnectingConnection(
            dsn, describe=describe, connect_timeout=connect_timeout, op_timeout=op_timeout,
            prepared_statements=prepared_statements,
        )

    async def start(self) -> None:
        await self._writer.run(_nothing)

    async def write_batch(self, records: Sequence[UsageRecord]) -> None:
        rows = [record_to_row(record) for record in records]
        await self._writer.run(lambda connection: self._insert(connection, rows))

    async def get(self, request_id: str) -> UsageRecord | None:
        async def select(connection: _Connection) -> TupleRow | None:
            cursor = await connection.execute(self._select_one_sql, (request_id,))
            return await cursor.fetchone()

        row = await self._reader.run(select)
        return None if row is None else record_from_row(row)

    async def aggregate(
        self, key: str | None = None, model: str | None = None, since: float | None = None
    ) -> list[UsageAggregate]:
        query, params = self._aggregate_query(key, model, since)

        async def select(connection: _Connection) -> list[TupleRow]:
            cursor = await connection.execute(query, params)
            return await cursor.fetchall()

        rows = await self._reader.run(select)
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

    async def _insert(self, connection: _Connection, rows: list[tuple[object, ...]]) -> None:
        try:
            async with connection.transaction(), connection.cursor() as cursor:
                await cursor.executemany(self._insert_sql, rows)
        except _RECORD_ERRORS as exc:
            raise UsageRecordsRejected(str(exc)) from exc
        except psycopg.ProgrammingError as exc:
            if exc.sqlstate is None:  # raised before sending: a value psycopg cannot adapt
                raise UsageRecordsRejected(str(exc)) from exc
            raise

    async def _migrate(self, connection: _Connection) -> None:
        versions = f"{self._prefix}{VERSION_TABLE}"
        async with connection.transaction():
            # Serialises concurrent starts (several workers or gateways) on the same schema.
            await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self._schema),))
            if self._schema is not None:
                await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote_identifier(self._schema)}")
            await connection.execute(
                f"CREATE TABLE IF NOT EXISTS {versions}"
                " (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            cursor = await connection.execute(f"SELECT COALESCE(MAX(version), 0) FROM {versions}")
            row = await cursor.fetchone()
            current = 0 if row is None else int(row[0])
            for migration in pending_migrations(current):
                for statement in migration.postgres:
                    await connection.execute(statement.format(prefix=self._prefix))
                await connection.execute(
                    f"INSERT INTO {versions} (version, applied_at) VALUES (%s, %s)",
                    (migration.version, time.time()),
                )

    def _aggregate_query(
        self, key: str | None, model: str | None, since: float | None
    ) -> tuple[str, tuple[object, ...]]:
        conditions: list[str] = []
        params: list[object] = [Outcome.COMPLETED]
        if key is not None:
            conditions.append("key_name = %s")
            params.append(key)
        if model is not None:
            conditions.append("model = %s")
            params.append(model)
        if since is not None:
            conditions.append("ts >= %s")
            params.append(since)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        query = (
            "SELECT model, key_name, COUNT(*),"
            " SUM(CASE WHEN outcome <> %s THEN 1 ELSE 0 END),"
            # SUM(bigint) is numeric in PostgreSQL; back to bigint so the driver returns int, not Decimal.
            " COALESCE(SUM(prompt_tokens), 0)::bigint, COALESCE(SUM(completion_tokens), 0)::bigint,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_s),"
            " percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_s)"
            f" FROM {self._records_table} {where} GROUP BY model, key_name"
        )
        return query, tuple(params)


async def _nothing(connection: _Connection) -> None:
    """Connecting (and so migrating) is the whole of `start`."""


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lock_key(schema: str | None) -> int:
    digest = hashlib.sha256(f"sluicegate.usage:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
