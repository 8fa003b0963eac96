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
- :mod:`bot.db.postgres`: PostgreSQL (a pool, advisory locks, schemas);
- :mod:`bot.db.transient` and :mod:`bot.db.outages`: which errors are an outage, and
  how a caller waits one out or reports it once;
- :mod:`bot.db.batching`: a group commit for the ledger's reservations;
- :mod:`bot.db.signals`: wake-ups across the fleet (built on this package's
  :class:`Database`, so imported from its module, not re-exported here).

What the rest of the bot uses is exported here (``__all__``); what only the tests use
(the migrations' loader, the SQL rewriting, the engines' constants) is imported from
its module.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.db.batching import GroupCommit
from bot.db.bulk import RowsInsert
from bot.db.interface import Database, HotStatement, Migration, Row, Transaction
from bot.db.outages import report_db_outage, subscribe_outages, through_outages
from bot.db.postgres import PostgresDatabase
from bot.db.sqlite import SqliteDatabase
from bot.db.timestamps import parse_ts, ts, utc_now
from bot.db.transient import DbOutageKind, db_outage, is_transient
from bot.db.urls import POSTGRES_SCHEMES, SQLITE_PREFIX, Engine, engine_of, sqlite_path

__all__ = [
    "POSTGRES_SCHEMES",
    "SQLITE_PREFIX",
    "Database",
    "DbOutageKind",
    "Engine",
    "GroupCommit",
    "HotStatement",
    "Migration",
    "PostgresDatabase",
    "Row",
    "RowsInsert",
    "SqliteDatabase",
    "Transaction",
    "db_outage",
    "engine_of",
    "is_transient",
    "open_database",
    "parse_ts",
    "report_db_outage",
    "sqlite_path",
    "subscribe_outages",
    "through_outages",
    "ts",
    "utc_now",
]


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
