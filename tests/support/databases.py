"""The test databases: a fresh SQLite file, or a fresh schema on the PostgreSQL test server.

The server is named by ``TEST_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When it cannot be reached the PostgreSQL
variants are skipped with the reason, except when ``CI=true``: then they fail, so CI never
passes by skipping. ``tests/conftest.py`` builds its ``databases`` fixture from these.

Under pytest-xdist each worker uses a database of its own beside that one (``test_gw0``,
``test_gw1``...; made on first use, kept for the next run): the bot's advisory locks are
per database, so tests running side by side in two workers never wait on each other's.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bot.db import Database, Engine, Migration, open_database

BASE_PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0"... under pytest-xdist, else ""


def _worker_url(url: str, worker: str) -> str:
    """``url`` with the database name suffixed by the xdist worker (unchanged without one)."""
    if not worker:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}_{worker}"))


PG_URL = _worker_url(BASE_PG_URL, WORKER)  # the database this process's tests use
ENGINES: tuple[Engine, ...] = ("sqlite", "postgresql")
# Errors a constraint violation raises, whichever the engine.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    asyncpg.IntegrityConstraintViolationError,
)
_pg_problem: list[str] = []  # why PostgreSQL is unreachable (checked once per session)
_pg_checked: list[bool] = []


def _pg_where() -> str:
    """host:port/database of the test server, without any password."""
    parts = urlsplit(PG_URL)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


async def require_postgres() -> None:
    """Skip (or, with CI=true, fail) when the PostgreSQL test server is unreachable."""
    if not _pg_checked:
        try:
            conn = await asyncpg.connect(BASE_PG_URL, timeout=5)
            try:
                if PG_URL != BASE_PG_URL:
                    await _create_worker_database(conn)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            _pg_problem.append(f"{type(exc).__name__}: {exc}")
        _pg_checked.append(True)
    if _pg_problem:
        reason = f"PostgreSQL test server {_pg_where()} unreachable ({_pg_problem[0]})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true, so this fails instead of skipping")
        pytest.skip(f"{reason}; set TEST_DATABASE_URL or start PostgreSQL")


async def _create_worker_database(conn: asyncpg.Connection) -> None:
    """Create this xdist worker's database on the test server unless it exists."""
    name = urlsplit(PG_URL).path.lstrip("/")
    exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    if not exists:
        # (DuplicateDatabaseError: made meanwhile by a worker of the same name in another run)
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            await conn.execute(f'CREATE DATABASE "{name}"')


async def drop_schema(schema: str) -> None:
    """Drop a test schema and everything in it."""
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@dataclass
class Databases:
    """Opens connections to one fresh database of the engine under test.

    Every :meth:`open` reaches the same database (SQLite file or PostgreSQL schema), as
    another process would; all are closed at the end of the test.
    """

    engine: Engine
    url: str
    schema: str | None
    opened: list[Database] = field(default_factory=list)

    async def open(self, migrations: Iterable[Migration] | None = None) -> Database:
        db = await open_database(self.url, schema=self.schema, migrations=migrations)
        self.opened.append(db)
        return db

    async def close_all(self) -> None:
        for db in self.opened:
            await db.close()
        self.opened.clear()
