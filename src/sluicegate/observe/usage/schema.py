"""Schema migrations for the usage tables, for both SQL dialects.

Migrations are applied in order, each once, all pending ones in one transaction, and recorded in
`usage_schema_version`. A later version appends a `Migration` (new columns go at the end of `UsageRecord`
with a default, so old rows and older readers keep working). A database newer than this code is accepted:
its extra columns are never named by older code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

RECORDS_TABLE: Final = "usage_records"
VERSION_TABLE: Final = "usage_schema_version"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]
    """Statements with `{prefix}` where a table name needs its schema qualifier (empty or `"name".`)."""


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        version=1,
        description="usage_records",
        # STRICT: SQLite refuses values of the wrong type like PostgreSQL does, so both stores accept and
        # reject the same records.
        sqlite=(
            """
            CREATE TABLE usage_records (
                request_id TEXT PRIMARY KEY,
                ts REAL NOT NULL,
                key_name TEXT,
                model TEXT NOT NULL,
                deployment TEXT,
                endpoint TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                status INTEGER NOT NULL,
                outcome TEXT NOT NULL,
                ttft_s REAL,
                itl_mean_s REAL,
                itl_p95_s REAL,
                duration_s REAL NOT NULL,
                prompt_tokens INTEGER,
                completion_tokens INTEGER,
                finish_reason TEXT,
                bytes_sent INTEGER NOT NULL,
                client_disconnected INTEGER NOT NULL,
                sha256 TEXT,
                stream INTEGER NOT NULL
            ) STRICT
            """,
            "CREATE INDEX usage_records_ts ON usage_records (ts)",
            "CREATE INDEX usage_records_model_key_ts ON usage_records (model, key_name, ts)",
        ),
        postgres=(
            """
            CREATE TABLE {prefix}usage_records (
                request_id TEXT PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                key_name TEXT,
                model TEXT NOT NULL,
                deployment TEXT,
                endpoint TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                status INTEGER NOT NULL,
                outcome TEXT NOT NULL,
                ttft_s DOUBLE PRECISION,
                itl_mean_s DOUBLE PRECISION,
                itl_p95_s DOUBLE PRECISION,
                duration_s DOUBLE PRECISION NOT NULL,
                prompt_tokens BIGINT,
                completion_tokens BIGINT,
                finish_reason TEXT,
                bytes_sent BIGINT NOT NULL,
                client_disconnected BOOLEAN NOT NULL,
                sha256 TEXT,
                stream BOOLEAN NOT NULL
            )
            """,
            "CREATE INDEX usage_records_ts ON {prefix}usage_records (ts)",
            "CREATE INDEX usage_records_model_key_ts ON {prefix}usage_records (model, key_name, ts)",
        ),
    ),
    Migration(
        version=2,
        description="client_request_id",
        # The id the client sent (x-client-request-id / x-request-id), kept apart from the gateway's own
        # request_id so that a client reusing an id can never collide with another record.
        sqlite=("ALTER TABLE usage_records ADD COLUMN client_request_id TEXT",),
        postgres=("ALTER TABLE {prefix}usage_records ADD COLUMN client_request_id TEXT",),
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1].version


def pending_migrations(current_version: int) -> tuple[Migration, ...]:
    return tuple(migration for migration in MIGRATIONS if migration.version > current_version)
