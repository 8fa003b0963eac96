"""Fixtures shared by the whole suite.

``db`` (and everything built on it, like the ledger tests' ``ledger``) runs each test on
both engines: a fresh SQLite file, and a fresh schema on the PostgreSQL server named by
``TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``), dropped
afterwards. When that server cannot be reached the PostgreSQL variants are skipped with
the reason, except when ``CI=true``: then they fail, so CI never passes by skipping.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from PIL import Image

from bot.db import Database, Engine, Migration, open_database
from bot.i18n import set_strict

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
ENGINES: tuple[Engine, ...] = ("sqlite", "postgresql")
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
            conn = await asyncpg.connect(PG_URL, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            _pg_problem.append(f"{type(exc).__name__}: {exc}")
        else:
            await conn.close()
        _pg_checked.append(True)
    if _pg_problem:
        reason = f"PostgreSQL test server {_pg_where()} unreachable ({_pg_problem[0]})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true, so this fails instead of skipping")
        pytest.skip(f"{reason}; set TEST_DATABASE_URL or start PostgreSQL")


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


@pytest.fixture(autouse=True)
def strict_translations() -> Iterator[None]:
    """In tests a missing catalogue key or placeholder raises instead of falling back to
    English, so a message that would be shown half-translated fails the suite."""
    set_strict(True)
    yield
    set_strict(False)


@pytest.fixture(params=ENGINES)
async def databases(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Databases]:
    engine: Engine = request.param
    if engine == "sqlite":
        dbs = Databases("sqlite", f"sqlite:///{tmp_path / 'nested' / 'test.db'}", None)
        yield dbs
        await dbs.close_all()
        return
    await require_postgres()
    dbs = Databases("postgresql", PG_URL, f"t_{uuid.uuid4().hex[:16]}")
    try:
        yield dbs
    finally:
        await dbs.close_all()
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {dbs.schema} CASCADE")
        finally:
            await conn.close()


@pytest.fixture
async def db(databases: Databases) -> Database:
    """A migrated database, on each engine in turn."""
    return await databases.open()


def png(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (30, 140, 220)) -> bytes:
    """A small solid PNG: the suite's (and the benchmarks') ordinary input image."""
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()
