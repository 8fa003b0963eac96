"""Fixtures shared by the whole suite.

``db`` (and everything built on it, like the ledger tests' ``ledger``) runs each test on
both engines: a fresh SQLite file, and a fresh schema on the PostgreSQL server named by
``TEST_DATABASE_URL``, dropped afterwards (see :mod:`tests.support.databases`: when that
server cannot be reached the PostgreSQL variants are skipped, or fail with ``CI=true``).

Helpers live in :mod:`tests.support`; import them from there, never from this file.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.db import Database, Engine
from bot.i18n import set_strict
from tests.support.databases import (
    ENGINES,
    PG_URL,
    Databases,
    drop_schema,
    require_postgres,
)


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
        assert dbs.schema is not None
        await drop_schema(dbs.schema)


@pytest.fixture
async def db(databases: Databases) -> Database:
    """A migrated database, on each engine in turn."""
    return await databases.open()
