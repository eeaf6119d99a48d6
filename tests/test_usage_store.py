"""Usage records: both stores on real databases (SQLite files, the local PostgreSQL) and the batching recorder."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from sluicegate.observe.usage import (
    DropReason,
    Outcome,
    SQLiteUsageStore,
    UsageAggregate,
    UsageRecord,
    UsageRecorder,
    UsageStore,
    make_usage_store,
)
from sluicegate.observe.usage import schema as usage_schema
from sluicegate.observe.usage.postgres_store import PostgresUsageStore
from tests.support.postgres import PostgresUnavailable, TcpProxy, drop_schema, postgres_dsn

RECORDER_LOG = "sluicegate.observe.usage.recorder"
MODELS = ("gpt-4o", "llama-3-8b", "claude-sonnet")
KEYS = ("team-a", "team-b", None)
OUTCOMES = (Outcome.COMPLETED,) * 5 + (
    Outcome.CLIENT_DISCONNECTED,
    Outcome.TIMEOUT_IDLE,
    Outcome.UPSTREAM_ERROR,
)
T0 = 1_750_000_000.0

# Every field differs from its default, so a column that is not written or read back cannot go unnoticed.
FULL = UsageRecord(
    request_id="chatcmpl-ünïcode-0001",
    ts=1_750_000_123.456789,
    key_name="team-ünï",
    model="gpt-4o",
    deployment="azure-eastus-1",
    endpoint="/v1/chat/completions",
    attempts=3,
    status=200,
    outcome=Outcome.CLIENT_DISCONNECTED,
    ttft_s=0.123456789012,
    itl_mean_s=0.0123,
    itl_p95_s=0.0456,
    duration_s=12.5,
    prompt_tokens=2**40,
    completion_tokens=7,
    finish_reason="length",
    bytes_sent=2**33 + 1,
    client_disconnected=True,
    sha256=hashlib.sha256(b"data: {}\n\n").hexdigest(),
    stream=True,
)
SPARSE = UsageRecord(
    request_id="req-sparse",
    ts=T0,
    model="llama-3-8b",
    endpoint="/v1/completions",
    status=504,
    outcome=Outcome.TIMEOUT_FIRST_CHUNK,
    duration_s=30.0,
)


def make_record(index: int) -> UsageRecord:
    """Varied but deterministic records; every (model, key) group gets several TTFTs."""
    rng = random.Random(index)
    outcome = OUTCOMES[index % len(OUTCOMES)]
    has_ttft = index % 7 != 3
    return UsageRecord(
        request_id=f"req-{index:06d}",
        ts=T0 + index,
        key_name=KEYS[index % len(KEYS)],
        model=MODELS[(index // 3) % len(MODELS)],
        deployment=f"dep-{index % 2}",
        endpoint="/v1/chat/completions",
        attempts=1 + index % 3,
        status=200 if outcome in (Outcome.COMPLETED, Outcome.CLIENT_DISCONNECTED) else 502,
        outcome=outcome,
        ttft_s=rng.uniform(0.01, 2.0) if has_ttft else None,
        itl_mean_s=rng.uniform(0.001, 0.05) if has_ttft else None,
        itl_p95_s=rng.uniform(0.05, 0.2) if has_ttft else None,
        duration_s=rng.uniform(0.5, 30.0),
        prompt_tokens=rng.randrange(1, 5000) if index % 5 else None,
        completion_tokens=rng.randrange(0, 2000) if index % 5 else None,
        finish_reason="stop" if outcome == Outcome.COMPLETED else None,
        bytes_sent=rng.randrange(0, 10**6),
        client_disconnected=outcome == Outcome.CLIENT_DISCONNECTED,
        sha256=hashlib.sha256(str(index).encode()).hexdigest(),
        stream=index % 4 != 0,
    )


class CountingStore:
    """A real store that also remembers the size of every batch it took."""

    def __init__(self, inner: UsageStore) -> None:
        self.inner = inner
        self.batches: list[int] = []

    async def start(self) -> None:
        await self.inner.start()

    async def write_batch(self, records: Sequence[UsageRecord]) -> None:
        await self.inner.write_batch(records)
        self.batches.append(len(records))

    async def get(self, request_id: str) -> UsageRecord | None:
        return await self.inner.get(request_id)

    async def aggregate(
        self, key: str | None = None, model: str | None = None, since: float | None = None
    ) -> list[UsageAggregate]:
        return await self.inner.aggregate(key, model, since)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Backend:
    """One fresh database (a SQLite file or a PostgreSQL schema); every store it opens shares it."""

    kind: str
    open_store: Callable[..., UsageStore]
    schema_versions: Callable[[], list[int]]
    stores: list[UsageStore] = field(default_factory=list)

    def store(self, **options: Any) -> UsageStore:
        store = self.open_store(**options)
        self.stores.append(store)
        return store


async def count_records(store: UsageStore) -> int:
    return sum(row["requests"] for row in await store.aggregate())


async def eventually(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


def recorder_messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == RECORDER_LOG and text in r.getMessage()]


@contextlib.contextmanager
def sqlite_write_lock(path: Path) -> Iterator[None]:
    """Hold the file's write lock from another connection, as another process would."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    try:
        return postgres_dsn()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL is required for these tests: {exc}", pytrace=False)


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    schema = f"usage_test_{uuid.uuid4().hex[:16]}"
    yield schema
    drop_schema(pg_dsn, schema)


def sqlite_backend(path: Path) -> Backend:
    def versions() -> list[int]:
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(path)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if usage_schema.VERSION_TABLE not in tables:
                return []
            query = f"SELECT version FROM {usage_schema.VERSION_TABLE} ORDER BY version"
            return [row[0] for row in connection.execute(query)]

    def open_store(**options: Any) -> UsageStore:
        return SQLiteUsageStore(path, **options)

    return Backend("sqlite", open_store, versions)


def postgres_backend(dsn: str, schema: str) -> Backend:
    def versions() -> list[int]:
        with psycopg.connect(dsn, autocommit=True) as connection:
            table = f"{schema}.{usage_schema.VERSION_TABLE}"
            exists = connection.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            if exists is None or exists[0] is None:
                return []
            rows = connection.execute(f'SELECT version FROM "{schema}".{usage_schema.VERSION_TABLE} ORDER BY 1')
            return [row[0] for row in rows]

    def open_store(**options: Any) -> UsageStore:
        return PostgresUsageStore(dsn, schema=schema, **{"op_timeout": 10.0, **options})

    return Backend("postgres", open_store, versions)


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        made = sqlite_backend(tmp_path / "usage" / "usage.db")
    else:
        made = postgres_backend(request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema"))
    yield made
    for store in made.stores:
        await store.close()


# --- stores -------------------------------------------------------------------------------------------------


async def test_every_field_round_trips(backend: Backend) -> None:
    store = backend.store()
    await store.start()
    await store.write_batch([FULL, SPARSE])

    assert await store.get(FULL.request_id) == FULL
    assert await store.get(SPARSE.request_id) == SPARSE
    assert await store.get("no-such-request") is None
    got = await store.get(FULL.request_id)
    assert got is not None and got.client_disconnected is True and got.stream is True


async def test_a_request_id_is_stored_once_even_when_a_batch_is_retried(backend: Backend) -> None:
    store = backend.store()
    await store.start()
    await store.write_batch([FULL, SPARSE])
    changed = UsageRecord(**{**{f: getattr(FULL, f) for f in FULL.__struct_fields__}, "status": 599})
    await store.write_batch([changed, make_record(1)])

    assert await store.get(FULL.request_id) == FULL  # the first write wins
    assert await count_records(store) == 3


async def test_schema_is_created_on_an_empty_database_and_restart_is_idempotent(backend: Backend) -> None:
    assert backend.schema_versions() == []
    first = backend.store()
    await first.start()
    await first.write_batch([FULL])
    await first.close()
    assert backend.schema_versions() == [m.version for m in usage_schema.MIGRATIONS] == [1, 2]

    again = [backend.store() for _ in range(3)]
    await asyncio.gather(*(store.start() for store in again))
    await again[0].write_batch([SPARSE])

    assert backend.schema_versions() == [m.version for m in usage_schema.MIGRATIONS]
    assert await again[1].get(FULL.request_id) == FULL
    assert await count_records(again[2]) == 2


async def test_concurrent_first_starts_migrate_once(backend: Backend) -> None:
    stores = [backend.store() for _ in range(4)]
    await asyncio.gather(*(store.start() for store in stores))
    await asyncio.gather(*(store.write_batch([make_record(i)]) for i, store in enumerate(stores)))

    assert backend.schema_versions() == [m.version for m in usage_schema.MIGRATIONS]
    assert await count_records(stores[0]) == 4


async def test_a_later_migration_is_applied_on_restart_and_old_columns_keep_working(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = backend.store()
    await old.start()
    await old.write_batch([FULL])
    await old.close()
    next_version = usage_schema.LATEST_VERSION + 1
    added_column = usage_schema.Migration(
        version=next_version,
        description="test column",
        sqlite=("ALTER TABLE usage_records ADD COLUMN test_extra TEXT",),
        postgres=("ALTER TABLE {prefix}usage_records ADD COLUMN test_extra TEXT",),
    )
    monkeypatch.setattr(usage_schema, "MIGRATIONS", (*usage_schema.MIGRATIONS, added_column))

    upgraded = backend.store()
    await upgraded.start()
    await upgraded.write_batch([SPARSE])

    assert backend.schema_versions() == [*(m.version for m in usage_schema.MIGRATIONS[:-1]), next_version]
    assert await upgraded.get(FULL.request_id) == FULL
    assert await upgraded.get(SPARSE.request_id) == SPARSE


async def test_aggregates_and_percentiles_are_identical_in_sqlite_and_postgres(
    tmp_path: Path, pg_dsn: str, pg_schema: str
) -> None:
    records = [make_record(i) for i in range(400)]
    sqlite_store = SQLiteUsageStore(tmp_path / "usage.db")
    postgres_store = PostgresUsageStore(pg_dsn, schema=pg_schema)
    stores: list[UsageStore] = [sqlite_store, postgres_store]
    try:
        for store in stores:
            await store.start()
            for start in range(0, len(records), 100):
                await store.write_batch(records[start : start + 100])

        filters: list[dict[str, Any]] = [
            {},
            {"key": "team-a"},
            {"model": "llama-3-8b"},
            {"since": T0 + 250.5},
            {"key": "team-b", "model": "gpt-4o", "since": T0 + 100},
            {"key": "nobody"},
        ]
        for query in filters:
            from_sqlite = await sqlite_store.aggregate(**query)
            from_postgres = await postgres_store.aggregate(**query)
            assert from_sqlite == from_postgres, query

        everything = await sqlite_store.aggregate()
        assert everything == expected_aggregates(records)
        assert len(everything) == len(MODELS) * len(KEYS)
        assert await sqlite_store.aggregate(key="nobody") == []
    finally:
        for store in stores:
            await store.close()


def expected_aggregates(records: list[UsageRecord]) -> list[dict[str, Any]]:
    """The same totals computed independently: plain Python, percentiles by the statistics module."""
    groups: dict[tuple[str, str | None], list[UsageRecord]] = {}
    for record in records:
        groups.setdefault((record.model, record.key_name), []).append(record)
    rows = []
    for (model, key_name), members in groups.items():
        ttfts = sorted(r.ttft_s for r in members if r.ttft_s is not None)
        rows.append(
            {
                "model": model,
                "key_name": key_name,
                "requests": len(members),
                "errors": sum(r.outcome != Outcome.COMPLETED for r in members),
                "prompt_tokens": sum(r.prompt_tokens or 0 for r in members),
                "completion_tokens": sum(r.completion_tokens or 0 for r in members),
                "ttft_p50_s": pytest.approx(statistics.median(ttfts), rel=1e-12),
                "ttft_p95_s": pytest.approx(statistics.quantiles(ttfts, n=20, method="inclusive")[18], rel=1e-12),
            }
        )
    return sorted(rows, key=lambda row: (row["model"], row["key_name"] is not None, row["key_name"] or ""))


async def test_two_stores_in_one_process_write_one_sqlite_file_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    stores = [SQLiteUsageStore(path, busy_timeout=10), SQLiteUsageStore(path, busy_timeout=10)]
    try:
        await asyncio.gather(*(store.start() for store in stores))

        async def write(store: UsageStore, offset: int) -> None:
            for batch in range(20):
                start = offset + batch * 50
                await store.write_batch([make_record(i) for i in range(start, start + 50)])

        await asyncio.gather(write(stores[0], 0), write(stores[1], 10_000))
        assert await count_records(stores[0]) == 2000
    finally:
        for store in stores:
            await store.close()


WRITER_PROCESS = """
import asyncio, sys
from sluicegate.observe.usage import SQLiteUsageStore, UsageRecord

async def main(path: str, worker: str) -> None:
    store = SQLiteUsageStore(path, busy_timeout=10)
    await store.start()
    for batch in range(20):
        await store.write_batch([
            UsageRecord(request_id=f"w{worker}-{batch}-{i}", ts=1.0, model="m", endpoint="/v1/chat/completions",
                        status=200, outcome="completed", duration_s=0.1)
            for i in range(50)
        ])
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_several_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "workers.db"
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER_PROCESS, str(path), str(worker), stderr=asyncio.subprocess.PIPE
        )
        for worker in range(3)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), timeout=45)

    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr.decode()
    store = SQLiteUsageStore(path)
    try:
        await store.start()
        assert await count_records(store) == 3000
        assert await store.get("w2-19-49") is not None
    finally:
        await store.close()


def test_make_usage_store_picks_the_store_from_the_setting(tmp_path: Path) -> None:
    postgres = make_usage_store("postgresql://user@db.internal:5432/usage")
    assert isinstance(postgres, PostgresUsageStore)
    assert isinstance(make_usage_store("postgres://user@db.internal/usage"), PostgresUsageStore)
    unprepared = make_usage_store("postgresql://user@db.internal/usage", prepared_statements=False)
    assert isinstance(unprepared, PostgresUsageStore) and unprepared._writer._prepare_threshold is None
    relative = make_usage_store("sqlite:///data/usage.db")
    assert isinstance(relative, SQLiteUsageStore) and relative.path == Path("data/usage.db")
    absolute = make_usage_store(f"sqlite:///{tmp_path}/usage.db")
    assert isinstance(absolute, SQLiteUsageStore) and absolute.path == tmp_path / "usage.db"
    plain = make_usage_store("./usage.db")
    assert isinstance(plain, SQLiteUsageStore) and plain.path == Path("usage.db")

    for unsupported in ("mysql://db/usage", "", "sqlite://usage.db", "sqlite:///", "redis://localhost"):
        with pytest.raises(ValueError) as raised:
            make_usage_store(unsupported)
        message = str(raised.value)
        assert repr(unsupported) in message
        assert "postgresql://" in message and "sqlite:///" in message


# --- recorder -----------------------------------------------------------------------------------------------


async def test_full_batches_are_written_at_once_and_the_rest_waits_for_the_interval(tmp_path: Path) -> None:
    store = CountingStore(SQLiteUsageStore(tmp_path / "usage.db"))
    await store.start()
    recorder = UsageRecorder(store, batch_size=10, flush_interval=60)
    await recorder.start()
    try:
        assert all(recorder.submit(make_record(i)) for i in range(25))

        async def two_batches_written() -> bool:
            return store.batches == [10, 10]

        await eventually(two_batches_written)
        await asyncio.sleep(0.3)
        assert store.batches == [10, 10]
        assert recorder.queued == 5
    finally:
        await recorder.close()
        await store.close()
    assert store.batches == [10, 10, 5]
    assert recorder.written == 25


async def test_a_partial_batch_is_written_after_the_flush_interval(tmp_path: Path) -> None:
    store = CountingStore(SQLiteUsageStore(tmp_path / "usage.db"))
    await store.start()
    recorder = UsageRecorder(store, batch_size=1000, flush_interval=0.1)
    await recorder.start()
    try:
        for i in range(3):
            recorder.submit(make_record(i))

        async def stored() -> bool:
            return await store.get("req-000002") is not None

        await eventually(stored, within=5)
        assert store.batches == [3]
    finally:
        await recorder.close()
        await store.close()


async def test_close_writes_every_accepted_record(backend: Backend) -> None:
    store = backend.store()
    await store.start()
    recorder = UsageRecorder(store, batch_size=500, flush_interval=60)
    await recorder.start()
    records = [make_record(i) for i in range(1234)]
    assert all(recorder.submit(record) for record in records)

    await recorder.close()

    assert recorder.written == 1234 and recorder.dropped == 0 and recorder.queued == 0
    assert await count_records(store) == 1234
    assert await store.get(records[-1].request_id) == records[-1]
    assert recorder.submit(make_record(99_999)) is False  # closed: refused and counted
    assert recorder.dropped == 1


async def test_close_without_start_still_writes(tmp_path: Path) -> None:
    store = SQLiteUsageStore(tmp_path / "usage.db")
    await store.start()
    recorder = UsageRecorder(store)
    recorder.submit(FULL)
    await recorder.close()
    assert await store.get(FULL.request_id) == FULL
    await store.close()


async def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store = SQLiteUsageStore(path, busy_timeout=0.05)
    await store.start()
    drops: list[tuple[str, int]] = []
    recorder = UsageRecorder(
        store,
        max_queue=100,
        batch_size=10,
        flush_interval=0.02,
        retry_initial=0.01,
        retry_max=0.05,
        on_drop=lambda reason, count: drops.append((reason, count)),
    )
    await recorder.start()
    with sqlite_write_lock(path):
        slowest = 0.0
        accepted = 0
        for i in range(1000):
            started = time.perf_counter()
            accepted += recorder.submit(make_record(i))
            slowest = max(slowest, time.perf_counter() - started)
            if i % 100 == 0:
                await asyncio.sleep(0.01)  # let the flusher run into the locked file
        assert accepted == 100
        assert recorder.dropped == 900 and recorder.written == 0
        assert drops == [(DropReason.QUEUE_FULL, 1)] * 900
        # submit is ~1 µs; one that waited for the locked store would take the busy timeout (50 ms) at least.
        # The bound leaves room for a loaded machine descheduling the test for a few ms.
        assert slowest < 0.04
    await recorder.close()
    await store.close()
    assert recorder.written == 100
    reopened = SQLiteUsageStore(path)
    assert await count_records(reopened) == 100
    assert await reopened.get("req-000099") is not None
    await reopened.close()


async def test_sqlite_locked_for_a_while_loses_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=RECORDER_LOG)
    path = tmp_path / "usage.db"
    store = SQLiteUsageStore(path, busy_timeout=0.05)
    await store.start()
    recorder = UsageRecorder(store, batch_size=20, flush_interval=0.02, retry_initial=0.02, retry_max=0.1)
    await recorder.start()
    for i in range(50):
        recorder.submit(make_record(i))
    await eventually(lambda: _written(recorder, 50))
    with sqlite_write_lock(path):
        for i in range(50, 250):
            assert recorder.submit(make_record(i))
            if i % 20 == 0:
                await asyncio.sleep(0.03)
        await asyncio.sleep(0.2)
        assert recorder.written == 50
    for i in range(250, 300):
        recorder.submit(make_record(i))
    await recorder.close()

    assert recorder.written == 300 and recorder.dropped == 0
    assert await count_records(store) == 300
    assert len(recorder_messages(caplog, "usage store failing")) == 1
    assert len(recorder_messages(caplog, "recovered")) == 1
    await store.close()


async def _written(recorder: UsageRecorder, count: int) -> bool:
    return recorder.written == count


async def test_close_gives_up_after_its_timeout_and_counts_the_loss(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store = SQLiteUsageStore(path, busy_timeout=0.05)
    await store.start()
    drops: list[tuple[str, int]] = []
    recorder = UsageRecorder(store, retry_initial=0.02, retry_max=0.05, on_drop=lambda r, n: drops.append((r, n)))
    await recorder.start()
    with sqlite_write_lock(path):
        for i in range(30):
            recorder.submit(make_record(i))
        started = time.monotonic()
        await recorder.close(flush_timeout=0.5)
        assert time.monotonic() - started < 5
    assert recorder.dropped == 30 and recorder.written == 0
    assert drops == [(DropReason.SHUTDOWN_TIMEOUT, 30)]
    await store.close()


async def test_a_record_the_database_refuses_is_dropped_alone(backend: Backend) -> None:
    store = backend.store()
    await store.start()
    drops: list[tuple[str, int]] = []
    recorder = UsageRecorder(store, on_drop=lambda reason, count: drops.append((reason, count)))
    await recorder.start()
    fields = {name: getattr(SPARSE, name) for name in SPARSE.__struct_fields__}
    bad = UsageRecord(**{**fields, "request_id": "req-bad", "status": "not-a-number"})
    for record in (FULL, bad, SPARSE):
        recorder.submit(record)
    await recorder.close()

    assert drops == [(DropReason.REJECTED, 1)]
    assert recorder.written == 2
    assert await store.get(FULL.request_id) == FULL
    assert await store.get(SPARSE.request_id) == SPARSE
    assert await store.get("req-bad") is None


async def test_postgres_prepared_statements_can_be_turned_off(pg_dsn: str, pg_schema: str) -> None:
    """usage.prepared_statements: on by default the driver prepares the insert on the server once it has run a few
    times; off (for a pooler in transaction mode) the server never holds a prepared statement of the store's."""
    for prepared in (True, False):
        store = PostgresUsageStore(pg_dsn, schema=pg_schema, prepared_statements=prepared)
        await store.start()
        try:
            for i in range(8):
                await store.write_batch([make_record(100 * int(prepared) + i)])

            async def prepared_here(connection: psycopg.AsyncConnection[Any]) -> int:
                cursor = await connection.execute("SELECT count(*) FROM pg_prepared_statements")
                row = await cursor.fetchone()
                assert row is not None
                return int(row[0])

            count = await store._writer.run(prepared_here)  # the writer's own session
            assert (count > 0) is prepared, (prepared, count)
        finally:
            await store.close()


async def test_postgres_connection_killed_loses_nothing(
    pg_dsn: str, pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=RECORDER_LOG)
    application = f"sluicegate-test-{uuid.uuid4().hex[:8]}"
    store = PostgresUsageStore(make_conninfo(pg_dsn, application_name=application), schema=pg_schema)
    await store.start()
    recorder = UsageRecorder(store, batch_size=20, flush_interval=0.02, retry_initial=0.02, retry_max=0.1)
    await recorder.start()
    try:
        for i in range(40):
            recorder.submit(make_record(i))
        await eventually(lambda: _written(recorder, 40))
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (application,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        for i in range(40, 100):
            recorder.submit(make_record(i))
    finally:
        await recorder.close()
    assert recorder.written == 100 and recorder.dropped == 0
    assert await count_records(store) == 100
    assert len(recorder_messages(caplog, "recovered")) == 1
    await store.close()


async def test_postgres_outage_loses_nothing_while_the_queue_has_room(
    pg_dsn: str, pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=RECORDER_LOG)
    proxy = TcpProxy(pg_dsn)
    await proxy.start()
    store = PostgresUsageStore(proxy.dsn(), schema=pg_schema, connect_timeout=2, op_timeout=3)
    recorder = UsageRecorder(store, batch_size=20, flush_interval=0.02, retry_initial=0.02, retry_max=0.2)
    try:
        await store.start()
        await recorder.start()
        for i in range(50):
            recorder.submit(make_record(i))
        await eventually(lambda: _written(recorder, 50))

        proxy.cut()
        for i in range(50, 150):
            assert recorder.submit(make_record(i))
            if i % 20 == 0:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert recorder.written == 50 and recorder.queued == 100

        proxy.restore()
        for i in range(150, 180):
            recorder.submit(make_record(i))
        await recorder.close(flush_timeout=15)
    finally:
        await store.close()
        await proxy.close()

    assert recorder.written == 180 and recorder.dropped == 0
    direct = PostgresUsageStore(pg_dsn, schema=pg_schema)
    try:
        assert await count_records(direct) == 180
        assert await direct.get("req-000149") == make_record(149)
    finally:
        await direct.close()
    assert len(recorder_messages(caplog, "usage store failing")) == 1
    assert len(recorder_messages(caplog, "recovered")) == 1


async def test_submit_costs_about_a_microsecond(tmp_path: Path) -> None:
    recorder = UsageRecorder(SQLiteUsageStore(tmp_path / "unused.db"), max_queue=20_000)
    records = [make_record(i) for i in range(10_000)]
    started = time.perf_counter()
    for record in records:
        recorder.submit(record)
    per_submit = (time.perf_counter() - started) / len(records)
    assert recorder.queued == 10_000
    assert per_submit < 50e-6  # generous for a shared machine; typically well under 1 µs
