"""The database wrapper: pragmas, migrations in one transaction, the schema version."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.db import Database, Migration, load_migrations, split_statements


async def test_open_creates_the_directory_and_enables_wal(tmp_path: Path) -> None:
    """Opening a path in a missing directory creates it; WAL and foreign keys are on."""
    db = await Database.open(tmp_path / "a" / "b" / "x.db")
    try:
        assert (tmp_path / "a" / "b" / "x.db").exists()
        assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"  # type: ignore[index]
        assert (await db.fetchone("PRAGMA foreign_keys"))[0] == 1  # type: ignore[index]
        assert (await db.fetchone("PRAGMA busy_timeout"))[0] > 0  # type: ignore[index]
    finally:
        await db.close()


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
