"""The SQLite database: one aiosqlite connection, serialised writes, numbered migrations.

Open it once and share it::

    db = await Database.open(path)          # ... await db.close()
    async with await Database.open(path) as db:
        ...

Writes go through :meth:`Database.transaction` (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled
back if the block raises) or :meth:`Database.write` (one statement, atomic on its own;
concurrent ones share a transaction). Reads and writes hold one lock, so tasks sharing the
connection never interleave inside each other's transactions. ``BEGIN IMMEDIATE`` takes
SQLite's write lock at once, so several processes on one file stay correct too (each waits
up to :data:`BUSY_TIMEOUT_MS` for another's lock).

Migrations are the files ``bot/migrations/NNNN_name.sql``, applied in number order; every
pending one is applied in a single transaction at open (a failure leaves the database as
it was), and the schema version is kept in ``PRAGMA user_version``. Pragmas that cannot
run inside a transaction (``journal_mode``, ``foreign_keys``) do not belong in migrations.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aiosqlite

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 5_000  # how long a statement waits for another process's lock
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

Params = Sequence[Any] | dict[str, Any]
Row = aiosqlite.Row
_PendingWrite = tuple[str, "Params", "asyncio.Future[int]"]


class Transaction:
    """What :meth:`Database.transaction` yields: statements inside one transaction.

    SQL uses ``?`` (positional) or ``:name`` (named) placeholders. Rows are read by
    column name (``row["id"]``) or position.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the rows it changed."""
        cursor = await self._conn.execute(sql, params)
        return cursor.rowcount

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._conn.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def lock(self, *keys: str) -> None:
        """Serialise this transaction with others that lock any of ``keys``.

        SQLite's ``BEGIN IMMEDIATE`` already serialises every write transaction, so this
        is a no-op here; the PostgreSQL engine takes transaction-scoped advisory locks.
        """


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


class Database:
    """The bot's SQLite database."""

    engine = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._writes: list[_PendingWrite] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, *, migrations: Iterable[Migration] | None = None) -> Database:
        """Open (creating the directory and file), configure, and migrate the database."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            conn.row_factory = aiosqlite.Row
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            db = cls(conn)
            await db.migrate(load_migrations() if migrations is None else list(migrations))
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher
        async with self._lock:
            await self._conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply every migration newer than ``user_version``, all in one transaction.

        Returns the versions applied (empty when the schema was up to date). The version
        is read again under the write lock, so two processes starting at once do not both
        apply the same migration.
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
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction (``BEGIN IMMEDIATE``); rolled back if the block raises.

        The transaction it yields is for this block only; do not keep it. A failing
        ``COMMIT`` is rolled back too, and its error raised.
        """
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._conn)
                await self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may have rolled back already
                    try:
                        await self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.warning("ROLLBACK failed after an error", exc_info=True)
                raise

    async def write(self, sql: str, params: Params = ()) -> int:
        """Run one statement in a write transaction; returns the rows changed.

        Writes that arrive while another is in flight are grouped into one ``BEGIN
        IMMEDIATE`` ... ``COMMIT`` (group commit): each statement is still atomic on its
        own, but many concurrent callers share the cost of the transaction. If a
        statement fails, the group is rolled back and each statement is retried alone,
        so one caller's error never undoes another's write.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._writes.append((sql, params, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_writes(), name="db-group-commit")
        return await future

    async def _flush_writes(self) -> None:
        batch: list[_PendingWrite] = []
        try:
            while self._writes:
                batch, self._writes = self._writes, []
                try:
                    counts = await self._run_batch(batch)
                except Exception:
                    for sql, params, future in batch:  # isolate the failing statement
                        try:
                            (count,) = await self._run_batch([(sql, params, future)])
                        except Exception as exc:
                            if not future.done():
                                future.set_exception(exc)
                        else:
                            if not future.done():
                                future.set_result(count)
                else:
                    for (_, _, future), count in zip(batch, counts, strict=True):
                        if not future.done():
                            future.set_result(count)
        finally:
            # Only reached with work left if this task was cancelled: nobody must wait
            # forever for a write that will not run.
            abandoned, self._writes = [*batch, *self._writes], []
            for _, _, future in abandoned:
                if not future.done():
                    future.cancel()

    async def _run_batch(self, batch: list[_PendingWrite]) -> list[int]:
        async with self.transaction() as tx:
            return [await tx.execute(sql, params) for sql, params, _ in batch]

    # Reads take the lock too: a read left open on the shared connection while another
    # task begins a write would pin a stale snapshot (SQLITE_BUSY_SNAPSHOT).
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._lock:
            return list(await self._conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None
