"""Pick a usage store from the `usage.dsn` setting."""

from __future__ import annotations

from pathlib import Path

from .sqlite_store import SQLiteUsageStore
from .store import UsageStore

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite:///"


def make_usage_store(dsn_or_path: str, *, prepared_statements: bool = True) -> UsageStore:
    """`postgresql://...` or `postgres://...` -> PostgreSQL; `sqlite:///path` or a plain file path -> SQLite.
    `prepared_statements` only matters for PostgreSQL.

    `sqlite:///relative.db` is relative to the working directory, `sqlite:////var/lib/usage.db` absolute (the
    SQLAlchemy convention). The store is not started: call `await store.start()`.
    """
    value = dsn_or_path.strip()
    if value.startswith(_POSTGRES_SCHEMES):
        # Imported here so a SQLite-only deployment never loads the PostgreSQL driver.
        from .postgres_store import PostgresUsageStore

        return PostgresUsageStore(value, prepared_statements=prepared_statements)
    if value.startswith(_SQLITE_SCHEME) and len(value) > len(_SQLITE_SCHEME):
        return SQLiteUsageStore(Path(value[len(_SQLITE_SCHEME) :]))
    if value and "://" not in value and not value.startswith(("sqlite:", "postgres")):
        return SQLiteUsageStore(Path(value))
    raise ValueError(
        f"usage store {dsn_or_path!r} is not supported: use postgresql://... or postgres://... for "
        "PostgreSQL, sqlite:///path/to/usage.db or a plain file path for SQLite"
    )
