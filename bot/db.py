"""The SQLite database: one aiosqlite connection, serialised writes, numbered migrations.

Writes go through :meth:`Database.transaction` (``BEGIN IMMEDIATE`` ... ``COMMIT``) or
:meth:`Database.write` (one statement in its own transaction); reads and writes hold one
lock, so tasks sharing the connection never interleave inside each other's transactions.
Migrations are the files ``bot/migrations/NNNN_name.sql``; every pending one is applied in a single
transaction at open, and the schema version is kept in ``PRAGMA user_version``.
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
_PendingWrite = tuple[str, "Params", "asyncio.Future[int]"]


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
        """Apply every migration newer than ``user_version``, all in one transaction."""
        current = await self.version()
        pending = [m for m in migrations if m.version > current]
        if not pending:
            return []
        async with self.transaction() as tx:
            for migration in pending:
                for statement in split_statements(migration.sql):
                    await tx.execute(statement)
            await tx.execute(f"PRAGMA user_version = {int(pending[-1].version)}")
        applied = [m.version for m in pending]
        log.info("Database migrated to version %d (applied %s)", applied[-1], applied)
        return applied

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); rolled back if the block raises."""
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            else:
                await self._conn.execute("COMMIT")

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

    async def _run_batch(self, batch: list[_PendingWrite]) -> list[int]:
        async with self.transaction() as tx:
            counts = []
            for sql, params, _ in batch:
                cursor = await tx.execute(sql, params)
                counts.append(cursor.rowcount)
            return counts

    # Reads take the lock too: a read left open on the shared connection while another
    # task begins a write would pin a stale snapshot (SQLITE_BUSY_SNAPSHOT).
    async def fetchall(self, sql: str, params: Params = ()) -> list[aiosqlite.Row]:
        async with self._lock:
            return list(await self._conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Params = ()) -> aiosqlite.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None
