"""Usage records: one per request, queued off the hot path and written in batches to SQLite or PostgreSQL.

Wiring: `store = make_usage_store(dsn)`, `await store.start()` (creates or migrates the schema),
`recorder = UsageRecorder(store, on_drop=...)`, `await recorder.start()`;
per request `recorder.submit(record)`;
at shutdown `await recorder.close()` then `await store.close()`. Queries go to the store directly.
`PostgresUsageStore` lives in `.postgres_store` (imported on demand so SQLite-only setups skip the driver).
"""

from .factory import make_usage_store
from .record import USAGE_COLUMNS, Outcome, UsageRecord
from .recorder import DropReason, UsageRecorder
from .sqlite_store import SQLiteUsageStore
from .store import UsageAggregate, UsageRecordsRejected, UsageStore, UsageStoreUnavailable

__all__ = [
    "USAGE_COLUMNS",
    "DropReason",
    "Outcome",
    "SQLiteUsageStore",
    "UsageAggregate",
    "UsageRecord",
    "UsageRecorder",
    "UsageRecordsRejected",
    "UsageStore",
    "UsageStoreUnavailable",
    "make_usage_store",
]
