"""PostgreSQL, for a fleet: an asyncpg pool, advisory locks, one schema per database.

``lock(*keys)`` takes transaction-scoped advisory locks
(``pg_advisory_xact_lock(hashtextextended(key, 0))``) in sorted order, which is how a
check-then-write (the ledger's reservation) is serialised under READ COMMITTED.
``write()`` runs the statement alone (autocommit: its own transaction). Migrations run
under an advisory lock per schema, so processes starting at once apply each one once.

A partition never hangs a caller: opening a connection gives up after
:data:`PG_CONNECT_TIMEOUT`, waiting for a pooled one after :data:`PG_ACQUIRE_TIMEOUT`, and a
statement after :data:`PG_COMMAND_TIMEOUT`. asyncpg then sends PostgreSQL a cancel request
(on a new connection, bounded by the command timeout too) and drops the connection if
that fails, so a caller hears ``TimeoutError`` at most about twice the command timeout
after its statement was sent. Each is a transient error (:mod:`bot.db.transient`).
Closing the database waits :data:`PG_CLOSE_TIMEOUT` for the polite goodbyes, then cuts
the connections. On the server's side, a transaction left open by a client that can no
longer be heard from is ended after :data:`PG_IDLE_IN_TRANSACTION_TIMEOUT`, releasing its
locks for the other processes of the fleet.

asyncpg's pool keeps one idle connection ready (``min_size``) and, when it cannot
reconnect it, logs "Failed to restore the pool connection floor" with a traceback every
1 to 60 s while the server is away. That record is replaced by one line of
:func:`bot.db.outages.report_db_outage`, at most every 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeAlias

import asyncpg
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from bot.db.interface import Database, Migration, Params, RoundTrips, Row, Transaction
from bot.db.migrations import apply_migration, load_migrations
from bot.db.outages import report_db_outage
from bot.db.sqltext import pg_args, pg_ddl, pg_rowcount
from bot.db.transient import db_outage
from bot.db.urls import Engine

log = logging.getLogger(__name__)

# A pooled connection (what ``Pool.acquire`` yields) or a direct one.
_PgConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

PG_POOL_MIN = 1
PG_POOL_MAX = 10
PG_COMMAND_TIMEOUT = 30.0  # seconds; a PostgreSQL statement running longer is cancelled
PG_CONNECT_TIMEOUT = 10.0  # seconds to open a connection (TCP, start-up, authentication)
PG_ACQUIRE_TIMEOUT = 30.0  # seconds to get a pooled connection, free or newly opened
PG_CLOSE_TIMEOUT = 10.0  # seconds to close the pool politely before its connections are cut
# Seconds a session may sit idle inside a transaction before PostgreSQL ends it: the bot
# never does (its transactions are a few statements in a row), but one cut off from the
# bot by a partition would otherwise hold its row and advisory locks until TCP gave up on
# it (hours), stalling every other process that needs them.
PG_IDLE_IN_TRANSACTION_TIMEOUT = 60.0
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# What asyncpg's pool logs (with a traceback) each time it fails to reconnect its idle one.
_POOL_FLOOR_MESSAGE = "Failed to restore the pool connection floor"


class _QuietPoolFloor(logging.Filter):
    """Turns asyncpg's "Failed to restore the pool connection floor" records into
    :func:`report_db_outage` lines when the failure is an outage; others pass as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if (
            exc is None
            or not isinstance(record.msg, str)
            or not record.msg.startswith(_POOL_FLOOR_MESSAGE)
            or db_outage(exc) is None
        ):
            return True
        report_db_outage(log, "reconnecting the pool's idle connection", exc)
        return False


_POOL_FLOOR_FILTER = _QuietPoolFloor()


def _quiet_asyncpg_pool() -> None:
    """Install the filter on asyncpg's pool logger, once per process."""
    pool_log = logging.getLogger("asyncpg.pool")
    if _POOL_FLOOR_FILTER not in pool_log.filters:
        pool_log.addFilter(_POOL_FLOOR_FILTER)


class PostgresTransaction(Transaction):
    def __init__(self, conn: _PgConnection, trips: RoundTrips) -> None:
        self._conn = conn
        self._trips = trips

    async def execute(self, sql: str, params: Params = ()) -> int:
        query, args = pg_args(sql, params)
        self._trips.add()
        return pg_rowcount(await self._conn.execute(query, *args))

    async def executemany(self, sql: str, params_seq: Iterable[Params]) -> None:
        batches = [pg_args(sql, params) for params in params_seq]
        if batches:
            self._trips.add()
            await self._conn.executemany(batches[0][0], [args for _, args in batches])

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        query, args = pg_args(sql, params)
        self._trips.add()
        return list(await self._conn.fetch(query, *args))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        query, args = pg_args(sql, params)
        self._trips.add()
        row: Row | None = await self._conn.fetchrow(query, *args)
        return row

    async def lock(self, *keys: str) -> None:
        for key in sorted(set(keys)):  # one order everywhere: no deadlock between lockers
            self._trips.add()
            await self._conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))", key
            )


class PostgresDatabase(Database):
    """PostgreSQL through an asyncpg pool."""

    engine: ClassVar[Engine] = "postgresql"

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        schema: str | None,
        *,
        acquire_timeout: float = PG_ACQUIRE_TIMEOUT,
        close_timeout: float = PG_CLOSE_TIMEOUT,
    ) -> None:
        self._pool = pool
        self.schema = schema
        self.round_trips = RoundTrips()
        self._acquire_timeout = acquire_timeout
        self._close_timeout = close_timeout

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        """The asyncpg pool, for PostgreSQL-only tools (bulk copies)."""
        return self._pool

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        schema: str | None = None,
        migrations: Iterable[Migration] | None = None,
        min_size: int = PG_POOL_MIN,
        max_size: int = PG_POOL_MAX,
        command_timeout: float = PG_COMMAND_TIMEOUT,
        connect_timeout: float = PG_CONNECT_TIMEOUT,
        acquire_timeout: float = PG_ACQUIRE_TIMEOUT,
        close_timeout: float = PG_CLOSE_TIMEOUT,
        idle_in_transaction_timeout: float = PG_IDLE_IN_TRANSACTION_TIMEOUT,
    ) -> PostgresDatabase:
        """Connect a pool (in ``schema`` if given, creating it) and migrate.

        The timeouts (seconds; see the module docstring) are shortened by tests.
        """
        _quiet_asyncpg_pool()
        # Custom plans: a generic plan cached while a table was nearly empty (sequential
        # scans) would be kept as the ledger grows; measured 4x slower at 8,000 entries.
        settings: dict[str, str] = {
            "application_name": "upscale-bot",
            "plan_cache_mode": "force_custom_plan",
            "idle_in_transaction_session_timeout": str(round(idle_in_transaction_timeout * 1000)),
        }
        if schema is not None:
            if not _SCHEMA_NAME.match(schema):
                raise ValueError("schema names are lower-case letters, digits and _")
            conn = await asyncpg.connect(
                url, timeout=connect_timeout, command_timeout=command_timeout
            )
            try:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            except asyncpg.UniqueViolationError:
                pass  # created by another opener at the same moment
            finally:
                # If the goodbye fails, asyncpg cuts the connection; what went before stands.
                with contextlib.suppress(
                    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError
                ):
                    await conn.close(timeout=close_timeout)
            settings["search_path"] = schema
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            timeout=connect_timeout,
            server_settings=settings,
        )
        db = cls(pool, schema, acquire_timeout=acquire_timeout, close_timeout=close_timeout)
        try:
            await db.migrate(load_migrations() if migrations is None else list(migrations))
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        """Close the pool: each connection says goodbye once released; after the close
        timeout (a partition: no goodbye gets through) the rest are cut."""
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._pool.close()
        except TimeoutError:
            log.warning(
                "PostgreSQL did not answer the pool's goodbyes in %.0f s; connections cut",
                self._close_timeout,
            )
            self._pool.terminate()

    def _acquire(self) -> PoolAcquireContext[Any]:
        """A pooled connection, waited for at most the acquire timeout (which also bounds
        its release: a connection whose statement timed out is dropped, not waited for)."""
        return self._pool.acquire(timeout=self._acquire_timeout)

    async def version(self) -> int:
        async with self._acquire() as conn:
            return await self._version(conn)

    @staticmethod
    async def _version(conn: _PgConnection) -> int:
        # pg_class is read with this statement's snapshot, not the relation cache, which
        # can still say "no such table" after waiting for another migrator's lock.
        exists = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relname = 'schema_version')"
        )
        if not exists:
            return 0
        value = await conn.fetchval("SELECT max(version) FROM schema_version")
        return int(value or 0)

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply pending migrations in one transaction, under an advisory lock.

        The lock (per schema) makes a second process starting at the same moment wait,
        then find the schema up to date. Statements are translated by :func:`pg_ddl`.
        """
        migrations = list(migrations)
        async with self._acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended("
                "'upscale-bot:migrate:' || current_schema(), 0))"
            )
            current = await self._version(conn)
            if migrations and current > max(m.version for m in migrations):
                log.warning("Database schema version %d is newer than this code knows", current)
            pending = [m for m in migrations if m.version > current]
            if not pending:
                return []
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"
            )
            tx = PostgresTransaction(conn, self.round_trips)
            for migration in pending:
                await apply_migration(tx, migration, pg_ddl)
            await conn.execute("DELETE FROM schema_version")
            await conn.execute(
                "INSERT INTO schema_version (version) VALUES ($1)", pending[-1].version
            )
        applied = [m.version for m in pending]
        log.info("Database migrated to version %d (applied %s)", applied[-1], applied)
        return applied

    @asynccontextmanager
    async def transaction(self, *, urgent: bool = False) -> AsyncIterator[Transaction]:
        """A transaction (READ COMMITTED) on one pooled connection; rolled back if the
        block raises. Use ``tx.lock`` to serialise a check-then-write."""
        self.round_trips.add(2)  # BEGIN and COMMIT
        async with self._acquire() as conn, conn.transaction():
            yield PostgresTransaction(conn, self.round_trips)

    async def write(self, sql: str, params: Params = (), *, urgent: bool = False) -> int:
        query, args = pg_args(sql, params)
        self.round_trips.add()
        async with self._acquire() as conn:
            return pg_rowcount(await conn.execute(query, *args))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        query, args = pg_args(sql, params)
        self.round_trips.add()
        async with self._acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def drop_schema(self) -> None:
        """Drop this database's schema and everything in it (tests)."""
        if self.schema is None:
            raise ValueError("no schema chosen")
        await self._pool.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
