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
(``row["id"]``) or position (``row[0]``). Bytes round-trip as BLOB / BYTEA. Timestamps
are TEXT in one format everywhere: :func:`ts` of an aware datetime
(``YYYY-MM-DD HH:MM:SS.ffffff``, UTC).

The package, one concern a module:

- :mod:`bot.db.interface`: :class:`Database`, :class:`Transaction`, :class:`Row`,
  :class:`Migration`, and :class:`HotStatement` (statements that must read through an
  index at any size), which the engines and the migrations build on;
- :mod:`bot.db.sqltext`: the SQL text PostgreSQL needs (placeholders, DDL), and
  :mod:`bot.db.bulk`: many rows in one statement;
- :mod:`bot.db.migrations` (and :mod:`bot.db.steps`): the numbered migrations;
- :mod:`bot.db.sqlite`: SQLite (its turn lock, group commit and WAL checkpointer);
- :mod:`bot.db.postgres`: PostgreSQL (a pool, advisory locks, schemas).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

import asyncpg

from bot.db.bulk import RowsInsert
from bot.db.interface import (
    Database,
    HotStatement,
    Migration,
    MigrationStep,
    Params,
    RoundTrips,
    Row,
    Transaction,
)
from bot.db.migrations import MIGRATIONS_DIR, load_migrations, split_statements
from bot.db.postgres import PostgresDatabase, PostgresTransaction
from bot.db.sqlite import BUSY_TIMEOUT_MS, SqliteDatabase, SqliteTransaction
from bot.db.sqltext import pg_ddl, pg_placeholders
from bot.db.timestamps import TS_FORMAT, parse_ts, ts, utc_now
from bot.db.urls import POSTGRES_SCHEMES, SQLITE_PREFIX, Engine, sqlite_path

__all__ = [
    "BUSY_TIMEOUT_MS",
    "INTEGRITY_ERRORS",
    "MIGRATIONS_DIR",
    "POSTGRES_SCHEMES",
    "SQLITE_PREFIX",
    "TS_FORMAT",
    "Database",
    "Engine",
    "HotStatement",
    "Migration",
    "MigrationStep",
    "Params",
    "PostgresDatabase",
    "PostgresTransaction",
    "RoundTrips",
    "Row",
    "RowsInsert",
    "SqliteDatabase",
    "SqliteTransaction",
    "Transaction",
    "load_migrations",
    "open_database",
    "parse_ts",
    "pg_ddl",
    "pg_placeholders",
    "split_statements",
    "ts",
    "utc_now",
]

# Errors a constraint violation raises, whichever the engine.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    asyncpg.IntegrityConstraintViolationError,
)


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
        return await SqliteDatabase.open_file(sqlite_path(url), migrations=migrations)
    if url.startswith(POSTGRES_SCHEMES):
        return await PostgresDatabase.connect(url, schema=schema, migrations=migrations)
    raise ValueError("unsupported database URL: expected sqlite:/// or postgresql://")
