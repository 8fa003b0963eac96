"""The database: SQLite (embedded default) or PostgreSQL (a fleet), behind one interface.

Open it once and share it::

    db = await open_database("sqlite:///data/upscaler.db")   # ... await db.close()
    async with await open_database("postgresql://bot@db/upscaler") as db:
        ...

Both engines offer the same small surface (:class:`Database`): ``db.engine``,
``db.transaction()`` yielding a :class:`Transaction` (``execute`` -> rows changed,
``fetchone``, ``fetchall``, ``lock(*keys)``), ``db.write`` (one statement, atomic on its
own), ``db.fetchone``/``db.fetchall`` (reads outside a transaction), ``db.version()`` and
``db.close()``. SQL is written once, with ``?`` (positional) or ``:name`` (named)
placeholders; PostgreSQL gets them rewritten to ``$n``. Rows are read by column name
(``row["id"]``) or position (``row[0]``). Bytes round-trip as BLOB / BYTEA.

SQLite: one aiosqlite connection and a lock; write transactions are ``BEGIN IMMEDIATE``,
which serialises every writer (several processes on one file stay correct), so
``lock()`` is a no-op; concurrent :meth:`Database.write` calls share one transaction
(group commit).

PostgreSQL: an asyncpg pool. ``lock(*keys)`` takes transaction-scoped advisory locks
(``pg_advisory_xact_lock(hashtextextended(key, 0))``) in sorted order, which is how a
check-then-write (the ledger's reservation) is serialised under READ COMMITTED.
``write()`` runs the statement alone (autocommit: its own transaction).

Migrations are the files ``bot/migrations/NNNN_name.sql``, applied in number order; every
pending one is applied in a single transaction at open (a failure leaves the database as
it was). The version is ``PRAGMA user_version`` on SQLite and the ``schema_version`` table
on PostgreSQL, where the migration transaction first takes an advisory lock so processes
starting at once apply each migration once. Migrations are written in SQLite's dialect
and translated for PostgreSQL by :func:`pg_ddl` (INTEGER -> BIGINT, since Discord ids are
64-bit; ``INTEGER PRIMARY KEY`` -> identity; BLOB -> BYTEA). Timestamps are TEXT in one
format everywhere: :func:`ts` of an aware datetime (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, Self, TypeAlias

import aiosqlite
import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A pooled connection (what ``Pool.acquire`` yields) or a direct one.
_PgConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
WAL_ATTEMPTS = 40  # tries to switch a new file to WAL while another process does the same
BUSY_TIMEOUT_MS = 5_000  # how long a SQLite statement waits for another process's lock
CHECKPOINT_INTERVAL = 1.0  # seconds between background WAL checkpoints (SQLite)
PG_POOL_MIN = 1
PG_POOL_MAX = 10
PG_COMMAND_TIMEOUT = 30.0  # seconds; a PostgreSQL statement running longer is cancelled
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

Engine = Literal["sqlite", "postgresql"]
Params = Sequence[Any] | dict[str, Any]
_PendingWrite = tuple[str, "Params", "asyncio.Future[int]", bool]  # ..., urgent

# Errors a constraint violation raises, whichever the engine.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    asyncpg.IntegrityConstraintViolationError,
)


class Row(Protocol):
    """A result row: ``row["column"]`` or ``row[0]`` (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __len__(self) -> int: ...


# -- timestamps ------------------------------------------------------------------------


def utc_now() -> datetime:
    return datetime.now(UTC)


def ts(when: datetime) -> str:
    """A UTC timestamp as stored (sortable text, ``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    if when.tzinfo is None:
        raise ValueError("naive datetime")
    return when.astimezone(UTC).strftime(TS_FORMAT)


def parse_ts(text: str) -> datetime:
    """The aware UTC datetime of a stored timestamp (inverse of :func:`ts`)."""
    return datetime.strptime(text, TS_FORMAT).replace(tzinfo=UTC)


# -- migrations ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The numbered migrations in ``directory``, in order. Numbers must be unique."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name not NNNN_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version}")
        found[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def split_statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (handles ``;`` inside strings)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in current.splitlines()
    ):
        raise ValueError("incomplete SQL statement at the end of a migration")
    return statements


# String literals, quoted identifiers and comments are copied as they are; ``::`` is a
# PostgreSQL cast, not a placeholder. Dollar-quoted strings are not supported.
_SQL_TOKEN = re.compile(
    r"'(?:[^']|'')*'"
    r'|"(?:[^"]|"")*"'
    r"|--[^\n]*"
    r"|/\*.*?\*/"
    r"|::"
    r"|\?"
    r"|:[A-Za-z_][A-Za-z0-9_]*",
    re.DOTALL,
)
_DDL = re.compile(r"^\s*(?:--[^\n]*\n\s*)*(CREATE|ALTER)\b", re.IGNORECASE)


def _outside_literals(sql: str, rewrite: Callable[[str], str]) -> str:
    """Apply ``rewrite`` to the parts of ``sql`` outside literals and comments."""
    out: list[str] = []
    pos = 0
    for match in re.finditer(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", sql, re.DOTALL):
        out.append(rewrite(sql[pos : match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(rewrite(sql[pos:]))
    return "".join(out)


def pg_ddl(statement: str) -> str:
    """A migration statement, written for SQLite, as PostgreSQL runs it.

    Only ``CREATE``/``ALTER`` statements change: ``INTEGER PRIMARY KEY`` becomes a 64-bit
    identity, other ``INTEGER`` columns ``BIGINT`` (Discord ids are 64-bit), ``BLOB``
    becomes ``BYTEA``. Literals and comments are left alone.
    """
    if not _DDL.match(statement):
        return statement

    def rewrite(part: str) -> str:
        part = re.sub(
            r"\bINTEGER\s+PRIMARY\s+KEY\b",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            part,
            flags=re.IGNORECASE,
        )
        part = re.sub(r"\bINTEGER\b", "BIGINT", part, flags=re.IGNORECASE)
        return re.sub(r"\bBLOB\b", "BYTEA", part, flags=re.IGNORECASE)

    return _outside_literals(statement, rewrite)


@functools.lru_cache(maxsize=2048)
def pg_placeholders(sql: str) -> tuple[str, tuple[str, ...] | int]:
    """``sql`` with ``?``/``:name`` rewritten to ``$n``.

    Returns the new SQL and either the parameter names in ``$n`` order (named style) or
    the number of positional parameters. Mixing both styles is an error.
    """
    names: list[str] = []
    positional = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal positional
        token = match.group(0)
        if token == "?":
            if names:
                raise ValueError("SQL mixes ? and :name placeholders")
            positional += 1
            return f"${positional}"
        if token.startswith(":") and token != "::":
            if positional:
                raise ValueError("SQL mixes ? and :name placeholders")
            name = token[1:]
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"
        return token

    rewritten = _SQL_TOKEN.sub(replace, sql)
    return rewritten, (tuple(names) if names else positional)


def _pg_args(sql: str, params: Params) -> tuple[str, list[Any]]:
    rewritten, spec = pg_placeholders(sql)
    if isinstance(spec, tuple):
        if not isinstance(params, dict):
            raise TypeError("SQL with :name placeholders needs a dict of parameters")
        return rewritten, [params[name] for name in spec]
    if isinstance(params, dict):
        if spec == 0:
            return rewritten, []
        raise TypeError("SQL with ? placeholders needs a sequence of parameters")
    if len(params) != spec:
        raise ValueError(f"SQL has {spec} placeholders, {len(params)} parameters given")
    return rewritten, list(params)


def _rowcount(status: str) -> int:
    """Rows changed, from a PostgreSQL command tag ("INSERT 0 3", "UPDATE 2", ...)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


# -- the interface ---------------------------------------------------------------------


class Transaction(abc.ABC):
    """What :meth:`Database.transaction` yields: statements inside one transaction.

    SQL uses ``?`` (positional) or ``:name`` (named) placeholders. Rows are read by
    column name (``row["id"]``) or position.
    """

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, params_seq: Iterable[Params]) -> None:
        """Run one statement once per parameter set, in order (pipelined on PostgreSQL)."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    @abc.abstractmethod
    async def lock(self, *keys: str) -> None:
        """Serialise this transaction with others that lock any of ``keys``, until it ends.

        A no-op on SQLite (``BEGIN IMMEDIATE`` already serialises every writer).
        """


class Database(abc.ABC):
    """The bot's database, whichever the engine (see the module docstring)."""

    engine: ClassVar[Engine]

    @classmethod
    async def open(
        cls, path: Path, *, migrations: Iterable[Migration] | None = None
    ) -> SqliteDatabase:
        """Open (creating it) and migrate a SQLite file. Kept for callers with a path."""
        return await SqliteDatabase.open_file(path, migrations=migrations)

    @abc.abstractmethod
    def transaction(self, *, urgent: bool = False) -> AbstractAsyncContextManager[Transaction]:
        """``async with db.transaction() as tx``: a write transaction, rolled back if the
        block raises. ``tx`` is for this block only; do not keep it. ``urgent`` (work a
        job waits on before calling 1min.ai) goes ahead of ordinary work where callers
        queue for one connection (SQLite); PostgreSQL has a pool and ignores it."""

    @abc.abstractmethod
    async def write(self, sql: str, params: Params = (), *, urgent: bool = False) -> int:
        """Run one statement atomically on its own; returns the rows changed."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    @abc.abstractmethod
    async def version(self) -> int:
        """The schema version (the number of the last migration applied)."""

    @abc.abstractmethod
    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply every pending migration in one transaction; returns the versions applied."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_database(
    url: str,
    *,
    schema: str | None = None,
    migrations: Iterable[Migration] | None = None,
) -> Database:
    """Open and migrate the database a ``DATABASE_URL`` names.

    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the directory is
    created), or ``postgresql://`` / ``postgres://`` (asyncpg). ``schema`` (PostgreSQL
    only) creates that schema if needed and puts every connection in it, e.g. for tests.
    The URL may hold a password: it is never logged or put in an error message here.
    """
    if url.startswith(SQLITE_PREFIX) and len(url) > len(SQLITE_PREFIX):
        if schema is not None:
            raise ValueError("a schema can only be chosen on PostgreSQL")
        return await SqliteDatabase.open_file(
            Path(url[len(SQLITE_PREFIX) :]), migrations=migrations
        )
    if url.startswith(POSTGRES_SCHEMES):
        return await PostgresDatabase.connect(url, schema=schema, migrations=migrations)
    raise ValueError("unsupported database URL: expected sqlite:/// or postgresql://")


# -- SQLite ----------------------------------------------------------------------------


class SqliteTransaction(Transaction):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self._conn.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, params_seq: Iterable[Params]) -> None:
        await self._conn.executemany(sql, params_seq)

    # One trip to aiosqlite's thread per read (a cursor's execute, fetch and close are
    # three); reads in a transaction are small.
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self._conn.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def lock(self, *keys: str) -> None:
        return None


async def _set_wal(conn: aiosqlite.Connection) -> None:
    """``PRAGMA journal_mode = WAL``, retried: changing the journal mode needs an exclusive
    lock and does not wait for ``busy_timeout``, so two processes opening a new file at
    once can see "database is locked" for a moment."""
    for attempt in range(1, WAL_ATTEMPTS + 1):
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_ATTEMPTS:
                raise
            await asyncio.sleep(0.025 * attempt)


class _TurnLock:
    """The lock of the one SQLite connection, serving urgent waiters first.

    SQLite runs one statement at a time on the bot's connection, so under a burst every
    caller queues for it. Work that a job is waiting on before it can call 1min.ai (its
    turn in the rate window, its upscale slot, its next stage) is marked urgent and goes
    ahead of intake and bookkeeping; waiters of the same urgency keep their order.
    """

    def __init__(self) -> None:
        self._held = False
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def enqueue(self, urgent: bool) -> asyncio.Future[None]:
        """A place in line (already granted when the lock is free); await it with
        :meth:`wait`, then :meth:`release`."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._held:
            heapq.heappush(self._queue, (0 if urgent else 1, next(self._order), turn))
        else:
            self._held = True
            turn.set_result(None)
        return turn

    def hurry(self, turn: asyncio.Future[None]) -> None:
        """Move a waiting place among the urgent ones."""
        if not turn.done():
            heapq.heappush(self._queue, (0, next(self._order), turn))

    async def wait(self, turn: asyncio.Future[None]) -> None:
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # the lock was handed over just as the waiter was cancelled
            raise

    def release(self) -> None:
        while self._queue:
            _, _, turn = heapq.heappop(self._queue)
            if not turn.done():  # skips cancelled waiters and places hurried twice
                turn.set_result(None)
                return
        self._held = False

    @asynccontextmanager
    async def hold(self, urgent: bool = False) -> AsyncIterator[None]:
        await self.wait(self.enqueue(urgent))
        try:
            yield
        finally:
            self.release()


async def _connect(path: Path) -> aiosqlite.Connection:
    """A connection in autocommit mode (transactions are explicit), rows by column name."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        conn.row_factory = aiosqlite.Row
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _checkpoint_loop(path: Path) -> None:
    """Checkpoint the WAL every :data:`CHECKPOINT_INTERVAL` seconds on a connection of its
    own (its own thread): ``PASSIVE`` copies what it can without blocking writers or
    readers, and the WAL starts over once all of it is in the database file."""
    conn = await _connect(path)
    try:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                log.warning("WAL checkpoint failed; trying again", exc_info=True)
    finally:
        await asyncio.shield(conn.close())


class SqliteDatabase(Database):
    """SQLite: one aiosqlite connection, serialised writes with group commit."""

    engine: ClassVar[Engine] = "sqlite"

    engine = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = _TurnLock()
        self._writes: list[_PendingWrite] = []
        self._flusher: asyncio.Task[None] | None = None
        self._flush_turn: asyncio.Future[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None

    @classmethod
    async def open_file(
        cls, path: Path, *, migrations: Iterable[Migration] | None = None
    ) -> SqliteDatabase:
        """Open (creating the directory and file), configure, and migrate the database."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await _connect(path)
        try:
            await _set_wal(conn)
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            db = cls(conn)
            await db.migrate(load_migrations() if migrations is None else list(migrations))
            # Checkpoints move the WAL into the database file and fsync it: tens of
            # milliseconds, more after a few large inputs. Run by SQLite at the commit
            # that crosses its threshold, they would stall every caller waiting for this
            # connection; a second connection runs them in the background instead.
            await conn.execute("PRAGMA wal_autocheckpoint = 0")
            db._checkpoints = asyncio.create_task(_checkpoint_loop(path), name="sqlite-wal")
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        if self._flusher is not None:
            await self._flusher
        async with self._lock.hold():
            await self._conn.close()

    async def version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply every migration newer than ``user_version``, all in one transaction.

        The version is read again under the write lock, so two processes starting at
        once do not both apply the same migration.
        """
        known = await self.version()
        if migrations and known > max(m.version for m in migrations):
            log.warning("Database schema version %d is newer than this code knows", known)
        if all(m.version <= known for m in migrations):
            return []
        async with self.transaction() as tx:
            row = await tx.fetchone("PRAGMA user_version")
            current = int(row[0]) if row else 0
            pending = [m for m in migrations if m.version > current]
            for migration in pending:
                for statement in split_statements(migration.sql):
                    await tx.execute(statement)
            if pending:
                await tx.execute(f"PRAGMA user_version = {int(pending[-1].version)}")
        if not pending:
            return []
        applied = [m.version for m in pending]
        log.info("Database migrated to version %d (applied %s)", applied[-1], applied)
        return applied

    @asynccontextmanager
    async def transaction(self, *, urgent: bool = False) -> AsyncIterator[Transaction]:
        """A write transaction (``BEGIN IMMEDIATE``); rolled back if the block raises.

        A failing ``COMMIT`` is rolled back too, and its error raised. ``urgent`` puts
        it ahead of ordinary work waiting for the connection.
        """
        async with self._lock.hold(urgent), self._begin() as tx:
            yield tx

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[Transaction]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``); the caller holds the lock."""
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
            yield SqliteTransaction(self._conn)
            await self._conn.execute("COMMIT")
        except BaseException:
            # aiosqlite runs statements in order on its thread, and a cancelled await
            # does not withdraw a statement already queued: a ROLLBACK queued now runs
            # after it, so a cancelled BEGIN or COMMIT never leaves a transaction open.
            try:
                await asyncio.shield(self._conn.execute("ROLLBACK"))
            except sqlite3.OperationalError:
                pass  # no transaction was active (SQLite may have rolled back already)
            except sqlite3.Error:
                log.warning("ROLLBACK failed after an error", exc_info=True)
            raise

    async def write(self, sql: str, params: Params = (), *, urgent: bool = False) -> int:
        """Run one statement in a write transaction; returns the rows changed.

        Writes that arrive while another is in flight are grouped into one ``BEGIN
        IMMEDIATE`` ... ``COMMIT`` (group commit): each statement is still atomic on its
        own, but many concurrent callers share the cost of the transaction. If a
        statement fails, the group is rolled back and each statement is retried alone,
        so one caller's error never undoes another's write. An ``urgent`` write makes
        its group urgent (see :meth:`transaction`).
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._writes.append((sql, params, future, urgent))
        if urgent and self._flush_turn is not None:
            self._lock.hurry(self._flush_turn)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_writes(), name="db-group-commit")
        return await future

    async def _flush_writes(self) -> None:
        batch: list[_PendingWrite] = []
        try:
            while self._writes:
                self._flush_turn = self._lock.enqueue(any(w[3] for w in self._writes))
                try:
                    await self._lock.wait(self._flush_turn)
                finally:
                    self._flush_turn = None
                try:
                    batch, self._writes = self._writes, []  # with what came meanwhile
                    await self._run_batch(batch)
                    batch = []
                finally:
                    self._lock.release()
        finally:
            # Only reached with work left if this task was cancelled: nobody must wait
            # forever for a write that will not run.
            abandoned, self._writes = [*batch, *self._writes], []
            for _, _, future, _ in abandoned:
                if not future.done():
                    future.cancel()

    async def _run_batch(self, batch: list[_PendingWrite]) -> None:
        """Run a group of writes (the caller holds the lock) and answer each caller."""
        try:
            async with self._begin() as tx:
                counts = [await tx.execute(sql, params) for sql, params, _, _ in batch]
        except Exception:
            for sql, params, future, _ in batch:  # isolate the failing statement
                try:
                    async with self._begin() as tx:
                        count = await tx.execute(sql, params)
                except Exception as exc:
                    if not future.done():
                        future.set_exception(exc)
                else:
                    if not future.done():
                        future.set_result(count)
        else:
            for (_, _, future, _), count in zip(batch, counts, strict=True):
                if not future.done():
                    future.set_result(count)

    # Reads take the lock too: a read left open on the shared connection while another
    # task begins a write would pin a stale snapshot (SQLITE_BUSY_SNAPSHOT).
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._lock.hold():
            return list(await self._conn.execute_fetchall(sql, params))


# -- PostgreSQL ------------------------------------------------------------------------


class PostgresTransaction(Transaction):
    def __init__(self, conn: _PgConnection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        query, args = _pg_args(sql, params)
        return _rowcount(await self._conn.execute(query, *args))

    async def executemany(self, sql: str, params_seq: Iterable[Params]) -> None:
        batches = [_pg_args(sql, params) for params in params_seq]
        if batches:
            await self._conn.executemany(batches[0][0], [args for _, args in batches])

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        query, args = _pg_args(sql, params)
        return list(await self._conn.fetch(query, *args))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        query, args = _pg_args(sql, params)
        row: Row | None = await self._conn.fetchrow(query, *args)
        return row

    async def lock(self, *keys: str) -> None:
        for key in sorted(set(keys)):  # one order everywhere: no deadlock between lockers
            await self._conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))", key
            )


class PostgresDatabase(Database):
    """PostgreSQL through an asyncpg pool."""

    engine: ClassVar[Engine] = "postgresql"

    def __init__(self, pool: asyncpg.Pool[Any], schema: str | None) -> None:
        self._pool = pool
        self.schema = schema

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
    ) -> PostgresDatabase:
        """Connect a pool (in ``schema`` if given, creating it) and migrate."""
        # Custom plans: a generic plan cached while a table was nearly empty (sequential
        # scans) would be kept as the ledger grows; measured 4x slower at 8,000 entries.
        settings: dict[str, str] = {
            "application_name": "upscale-bot",
            "plan_cache_mode": "force_custom_plan",
        }
        if schema is not None:
            if not _SCHEMA_NAME.match(schema):
                raise ValueError("schema names are lower-case letters, digits and _")
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            except asyncpg.UniqueViolationError:
                pass  # created by another opener at the same moment
            finally:
                await conn.close()
            settings["search_path"] = schema
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=PG_COMMAND_TIMEOUT,
            server_settings=settings,
        )
        db = cls(pool, schema)
        try:
            await db.migrate(load_migrations() if migrations is None else list(migrations))
        except BaseException:
            await pool.close()
            raise
        return db

    async def close(self) -> None:
        await self._pool.close()

    async def version(self) -> int:
        async with self._pool.acquire() as conn:
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
        then find the schema up to date.
        """
        migrations = list(migrations)
        async with self._pool.acquire() as conn, conn.transaction():
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
            for migration in pending:
                for statement in split_statements(migration.sql):
                    await conn.execute(pg_ddl(statement))
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
        async with self._pool.acquire() as conn, conn.transaction():
            yield PostgresTransaction(conn)

    async def write(self, sql: str, params: Params = (), *, urgent: bool = False) -> int:
        query, args = _pg_args(sql, params)
        return _rowcount(await self._pool.execute(query, *args))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        query, args = _pg_args(sql, params)
        return list(await self._pool.fetch(query, *args))

    async def drop_schema(self) -> None:
        """Drop this database's schema and everything in it (tests)."""
        if self.schema is None:
            raise ValueError("no schema chosen")
        await self._pool.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
