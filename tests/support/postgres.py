"""The PostgreSQL server for tests, and a TCP proxy that can cut the connection to it.

`postgres_dsn()` never lets a test skip quietly: it finds the local server (starting the cluster if it is
installed but down) or raises `PostgresUnavailable` saying what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import time
from pathlib import Path

DSN_ENV = "SLUICEGATE_TEST_POSTGRES_DSN"
_LOCAL_DSNS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
_CLUSTER_CONFIG = Path("/etc/postgresql")
_START_WAIT_S = 15.0


class PostgresUnavailable(RuntimeError):
    pass


def _answers(dsn: str) -> str | None:
    """None if `SELECT 1` works on `dsn`, else why not. Creates the database if the server lacks it."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as connection:
            connection.execute("SELECT 1")
        return None
    except psycopg.OperationalError as exc:
        reason = str(exc).strip()
    database = conninfo_to_dict(dsn).get("dbname")
    if database and f'database "{database}" does not exist' in reason:
        admin_dsn = make_conninfo(dsn, dbname="postgres")
        # Another test process may create it first: ignore that and look again.
        with contextlib.suppress(psycopg.Error), psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
            return None
    return reason


def _start_local_cluster() -> str:
    if shutil.which("pg_ctlcluster") is None or not _CLUSTER_CONFIG.is_dir():
        return "PostgreSQL is not installed (no pg_ctlcluster or /etc/postgresql; apt-get install postgresql)"
    outputs = []
    for version in sorted(os.listdir(_CLUSTER_CONFIG)):
        result = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        error = result.stderr.strip()
        outputs.append(f"pg_ctlcluster {version} main start -> exit {result.returncode} {error}")
    return "; ".join(outputs)


@functools.cache
def postgres_dsn() -> str:
    """A DSN for tests: $SLUICEGATE_TEST_POSTGRES_DSN, else the local server on 127.0.0.1:5432 (database
    `test`, trust auth, user postgres or root), started if needed. Raises `PostgresUnavailable` otherwise."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise PostgresUnavailable(
            "psycopg is not installed in this environment: pip install 'psycopg[binary]'"
        ) from exc
    configured = os.environ.get(DSN_ENV)
    if configured:
        reason = _answers(configured)
        if reason is None:
            return configured
        raise PostgresUnavailable(f"${DSN_ENV}={configured!r} does not answer: {reason}")
    reasons = {dsn: _answers(dsn) for dsn in _LOCAL_DSNS}
    for dsn, reason in reasons.items():
        if reason is None:
            return dsn
    started = _start_local_cluster()
    deadline = time.monotonic() + _START_WAIT_S
    while time.monotonic() < deadline:
        for dsn in _LOCAL_DSNS:
            reasons[dsn] = _answers(dsn)
            if reasons[dsn] is None:
                return dsn
        time.sleep(0.5)
    tried = "; ".join(f"{dsn}: {reason}" for dsn, reason in reasons.items())
    raise PostgresUnavailable(
        f"no PostgreSQL for the tests. Set ${DSN_ENV}, or run a local server with trust auth and a database "
        f"named test. Tried {tried}. Starting the local cluster: {started}"
    )


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class TcpProxy:
    """Forwards a port on 127.0.0.1 to the server behind `dsn`, so a test can take the database away.

    `cut()` aborts every forwarded connection and refuses new ones (accepted, then closed at once) until
    `restore()`: to the client this is a server that went down and came back.
    """

    def __init__(self, dsn: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        self._params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
        self._target_host = self._params.get("host", "127.0.0.1")
        self._target_port = int(self._params.get("port", "5432"))
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self._down = False
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def dsn(self, **overrides: str) -> str:
        """The original DSN pointed at the proxy."""
        from psycopg.conninfo import make_conninfo

        params = {key: value for key, value in self._params.items() if key != "hostaddr"}
        params.update(host="127.0.0.1", port=str(self.port), **overrides)
        return make_conninfo("", **params)

    def cut(self) -> None:
        self._down = True
        for writer in list(self._live):
            writer.transport.abort()

    def restore(self) -> None:
        self._down = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._down:
            client_writer.transport.abort()
            return
        try:
            if self._target_host.startswith("/"):
                socket_path = f"{self._target_host}/.s.PGSQL.{self._target_port}"
                server_reader, server_writer = await asyncio.open_unix_connection(socket_path)
            else:
                target = (self._target_host, self._target_port)
                server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.transport.abort()
            return
        self._live.update((client_writer, server_writer))
        pipes = (
            asyncio.create_task(self._pipe(client_reader, server_writer)),
            asyncio.create_task(self._pipe(server_reader, client_writer)),
        )
        self._pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._pipes.difference_update(pipes)
            for writer in (client_writer, server_writer):
                self._live.discard(writer)
                writer.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
