"""The database wrapper: pragmas, migrations in one transaction, the schema version."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.db import BUSY_TIMEOUT_MS, Database, Migration, load_migrations, split_statements

TABLE_T = Migration(1, "0001_t.sql", "CREATE TABLE t (x INTEGER);")


async def pragma(db: Database, name: str) -> object:
    row = await db.fetchone(f"PRAGMA {name}")
    assert row is not None
    return row[0]


async def test_open_creates_the_directory(tmp_path: Path) -> None:
    """Opening a path in a missing directory creates the directory and the file."""
    async with await Database.open(tmp_path / "a" / "b" / "x.db"):
        assert (tmp_path / "a" / "b" / "x.db").exists()


async def test_open_sets_the_pragmas(tmp_path: Path) -> None:
    """WAL, a busy timeout, foreign keys and synchronous=NORMAL are on."""
    async with await Database.open(tmp_path / "x.db") as db:
        assert await pragma(db, "journal_mode") == "wal"
        assert await pragma(db, "busy_timeout") == BUSY_TIMEOUT_MS
        assert await pragma(db, "foreign_keys") == 1
        assert await pragma(db, "synchronous") == 1  # NORMAL


async def test_version_is_the_last_migration(tmp_path: Path) -> None:
    """user_version equals the highest migration number after opening."""
    db = await Database.open(tmp_path / "x.db")
    try:
        assert await db.version() == load_migrations()[-1].version
    finally:
        await db.close()


async def test_migrations_apply_once(tmp_path: Path) -> None:
    """Reopening a migrated database applies nothing and keeps the data."""
    path = tmp_path / "x.db"
    db = await Database.open(path)
    await db.write(
        "INSERT INTO audit_log (guild_id, actor_id, action, created_at) VALUES (1,2,'x','t')"
    )
    await db.close()
    db = await Database.open(path)
    try:
        assert await db.migrate(load_migrations()) == []
        assert (await db.fetchone("SELECT COUNT(*) FROM audit_log"))[0] == 1  # type: ignore[index]
    finally:
        await db.close()


async def test_failing_migration_rolls_back_entirely(tmp_path: Path) -> None:
    """If one pending migration fails, none of them is applied and the version stays."""
    migrations = [
        Migration(1, "0001_a.sql", "CREATE TABLE a (x INTEGER);"),
        Migration(2, "0002_b.sql", "CREATE TABLE b (x INTEGER);\nTHIS IS NOT SQL;"),
    ]
    with pytest.raises(Exception, match="syntax"):
        await Database.open(tmp_path / "x.db", migrations=migrations)
    db = await Database.open(tmp_path / "x.db", migrations=[])
    try:
        assert await db.version() == 0
        tables = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert tables == []
    finally:
        await db.close()


async def test_two_processes_opening_a_new_file_migrate_it_once(tmp_path: Path) -> None:
    """Two connections opening the same fresh file at once both succeed, schema applied once."""
    first, second = await asyncio.gather(
        Database.open(tmp_path / "x.db"), Database.open(tmp_path / "x.db")
    )
    try:
        assert await first.version() == await second.version() == load_migrations()[-1].version
    finally:
        await first.close()
        await second.close()


async def test_transaction_rolls_back_when_the_block_raises(tmp_path: Path) -> None:
    """Nothing written inside a failing transaction block stays."""
    async with await Database.open(tmp_path / "x.db", migrations=[TABLE_T]) as db:
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t (x) VALUES (1)")
                raise RuntimeError("boom")
        assert await db.fetchall("SELECT x FROM t") == []


async def test_failed_commit_is_rolled_back_and_the_connection_stays_usable(
    tmp_path: Path,
) -> None:
    """A COMMIT refused by a deferred foreign key leaves no open transaction behind."""
    schema = Migration(
        1,
        "0001_fk.sql",
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);\n"
        "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id)"
        " DEFERRABLE INITIALLY DEFERRED);",
    )
    async with await Database.open(tmp_path / "x.db", migrations=[schema]) as db:
        with pytest.raises(sqlite3.IntegrityError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO child (parent_id) VALUES (42)")
        assert await db.write("INSERT INTO parent (id) VALUES (1)") == 1
        assert await db.fetchall("SELECT parent_id FROM child") == []


async def test_old_resets_are_carried_over_to_reset_marks(tmp_path: Path) -> None:
    """Migration 3 marks entries up to a member's old reset time as reset, and no others."""
    path = tmp_path / "x.db"
    async with await Database.open(path, migrations=load_migrations()[:2]) as db:
        for rid, when in (
            ("before", "2026-03-15 10:00:00.000000"),
            ("after", "2026-03-15 12:00:00.000000"),
        ):
            await db.write(
                "INSERT INTO ledger_entries (id, guild_id, member_id, cost, state, created_at)"
                " VALUES (?, 1, 11, 1, 'committed', ?)",
                (rid, when),
            )
        await db.write(
            "INSERT INTO usage_resets (guild_id, member_id, reset_at)"
            " VALUES (1, 11, '2026-03-15 11:00:00.000000')"
        )
    async with await Database.open(path) as db:
        rows = await db.fetchall("SELECT id, reset_at FROM ledger_entries ORDER BY id")
        assert [tuple(r) for r in rows] == [
            ("after", None),
            ("before", "2026-03-15 11:00:00.000000"),
        ]


def test_split_statements_keeps_semicolons_in_strings() -> None:
    """A ';' inside a string literal does not split the statement."""
    script = "INSERT INTO t VALUES ('a;b');\n-- comment\nCREATE TABLE u (x);\n"
    assert split_statements(script) == [
        "INSERT INTO t VALUES ('a;b');",
        "-- comment\nCREATE TABLE u (x);",
    ]


def test_migration_numbers_are_unique_and_ordered() -> None:
    """The shipped migrations are numbered 1, 2, ... without gaps or repeats."""
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_grouped_writes_isolate_a_failing_statement(tmp_path: Path) -> None:
    """Concurrent writes share a transaction, but one failing statement neither undoes
    nor blocks the others: each caller gets its own result or error."""
    db = await Database.open(tmp_path / "x.db")
    try:
        insert = (
            "INSERT INTO audit_log (id, guild_id, actor_id, action, created_at)"
            " VALUES (?, 1, 2, 'x', 't')"
        )
        results = await asyncio.gather(
            db.write(insert, (1,)),
            db.write(insert, (1,)),  # duplicate primary key
            db.write(insert, (2,)),
            return_exceptions=True,
        )
        assert results[0] == 1 and results[2] == 1
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert (await db.fetchone("SELECT COUNT(*) FROM audit_log"))[0] == 2  # type: ignore[index]
    finally:
        await db.close()
