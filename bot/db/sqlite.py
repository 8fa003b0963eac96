"""SQLite, the embedded default: one connection, taken in turns, with group commit.

One aiosqlite connection serves the whole process, behind a :class:`TurnLock` that lets
work a job is waiting on go first. Write transactions are ``BEGIN IMMEDIATE``, which
serialises every writer (several processes on one file stay correct), so ``lock()`` is a
no-op; concurrent :meth:`SqliteDatabase.write` calls share one transaction (group
commit, :mod:`bot.db.batching`). WAL checkpoints run in the background on a second
connection instead of stalling a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import ClassVar

import aiosqlite

from bot.db.batching import GroupCommit
from bot.db.interface import Database, Migration, Params, RoundTrips, Row, Transaction
from bot.db.migrations import apply_migration, load_migrations
from bot.db.outages import report_db_outage
from bot.db.urls import Engine

log = logging.getLogger(__name__)

WAL_ATTEMPTS = 40  # tries to switch a new file to WAL while another process does the same
WAL_RETRY_STEP = 0.025  # seconds; the n-th retry waits n times this
BUSY_TIMEOUT_MS = 5_000  # how long a SQLite statement waits for another process's lock
CHECKPOINT_INTERVAL = 1.0  # seconds between background WAL checkpoints

_Write = tuple[str, Params]


class SqliteTransaction(Transaction):
    def __init__(self, conn: aiosqlite.Connection, trips: RoundTrips) -> None:
        self._conn = conn
        self._trips = trips

    async def execute(self, sql: str, params: Params = ()) -> int:
        self._trips.add()
        cursor = await self._conn.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, params_seq: Iterable[Params]) -> None:
        self._trips.add()
        await self._conn.executemany(sql, params_seq)

    # One trip to aiosqlite's thread per read (a cursor's execute, fetch and close are
    # three); reads in a transaction are small.
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        self._trips.add()
        return list(await self._conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        self._trips.add()
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
            await asyncio.sleep(WAL_RETRY_STEP * attempt)


class TurnLock:
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


async def _connect(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    """A connection in autocommit mode (transactions are explicit), rows by column name,
    waiting up to ``busy_timeout_ms`` for another connection's lock."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        conn.row_factory = aiosqlite.Row
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _checkpoint_loop(conn: aiosqlite.Connection, db: SqliteDatabase) -> None:
    """Checkpoint the WAL every :data:`CHECKPOINT_INTERVAL` seconds on ``conn``, a
    connection of its own (its own thread): ``PASSIVE`` copies what it can without
    blocking writers or readers, and the WAL starts over once all of it is in the database
    file. A second in which this process committed nothing has nothing to checkpoint: it
    is skipped, so an idle bot does not touch the file. Runs until cancelled; whoever
    opened ``conn`` closes it."""
    checkpointed = -1
    while True:
        await asyncio.sleep(CHECKPOINT_INTERVAL)
        if db.commits == checkpointed:
            continue
        checkpointed = db.commits
        try:
            db.round_trips.add()
            await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            report_db_outage(log, "checkpointing the WAL", exc)  # tried again later


class SqliteDatabase(Database):
    """SQLite: one aiosqlite connection, serialised writes with group commit."""

    engine: ClassVar[Engine] = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self.round_trips = RoundTrips()
        self.commits = 0  # write transactions committed (the checkpointer watches it)
        self._lock = TurnLock()
        self._writes: GroupCommit[None, _Write, int] = GroupCommit(
            self._run_writes, name="db-group-commit", gate=self._lock
        )
        self._checkpoints: asyncio.Task[None] | None = None
        self._checkpoint_conn: aiosqlite.Connection | None = None

    @classmethod
    async def open_file(
        cls,
        path: Path,
        *,
        migrations: Iterable[Migration] | None = None,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> SqliteDatabase:
        """Open (creating the directory and file), configure, and migrate the database.

        A statement that finds the file locked by another connection waits
        ``busy_timeout_ms`` for it, then raises "database is locked" (tests shorten it).
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await _connect(path, busy_timeout_ms)
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
            # Opened here, not in the task: a connection still being opened when the task
            # is cancelled (a close just after the open) would be left to its thread,
            # which then answers a loop that may be gone.
            db._checkpoint_conn = await _connect(path, busy_timeout_ms)
            db._checkpoints = asyncio.create_task(
                _checkpoint_loop(db._checkpoint_conn, db), name="sqlite-wal"
            )
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        if self._checkpoint_conn is not None:
            await self._checkpoint_conn.close()
            self._checkpoint_conn = None
        await self._writes.join()
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
                await apply_migration(tx, migration)
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
            self.round_trips.add()
            await self._conn.execute("BEGIN IMMEDIATE")
            yield SqliteTransaction(self._conn, self.round_trips)
            self.round_trips.add()
            await self._conn.execute("COMMIT")
            self.commits += 1
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
        own, but many concurrent callers share the cost of the transaction. An
        ``urgent`` write makes its group urgent (see :meth:`transaction`).
        """
        return await self._writes.submit(None, (sql, params), urgent=urgent)

    async def _run_writes(self, _: None, writes: list[_Write]) -> list[int]:
        """One group of writes in one transaction (the group commit holds the lock)."""
        async with self._begin() as tx:
            return [await tx.execute(sql, params) for sql, params in writes]

    # Reads take the lock too: a read left open on the shared connection while another
    # task begins a write would pin a stale snapshot (SQLITE_BUSY_SNAPSHOT).
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._lock.hold():
            self.round_trips.add()
            return list(await self._conn.execute_fetchall(sql, params))
