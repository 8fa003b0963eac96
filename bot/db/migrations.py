"""Schema migrations: numbered SQL files, applied in order, each once, in one transaction.

The files are ``bot/migrations/NNNN_name.sql``. Every pending one is applied in a single
transaction when the database is opened, so a failure leaves the database as it was. The
engines keep the version themselves (``PRAGMA user_version`` on SQLite, a
``schema_version`` table on PostgreSQL; see each engine's ``migrate``).

A migration may also have a Python step (:data:`bot.db.steps.STEPS`), run after its SQL
in the same transaction, for what portable SQL cannot compute (the Monday of a week).
What a migration is (:class:`~bot.db.interface.Migration`) is part of the database's
interface; this module loads, splits and applies them.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path

from bot.db.interface import Migration, MigrationStep, Transaction
from bot.db.steps import STEPS

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def load_migrations(
    directory: Path = MIGRATIONS_DIR, steps: Mapping[int, MigrationStep] | None = None
) -> list[Migration]:
    """The numbered migrations in ``directory``, in order. Numbers must be unique.

    ``steps`` are the Python steps by version; by default, the shipped ones for the
    shipped directory and none elsewhere.
    """
    if steps is None:
        steps = STEPS if directory == MIGRATIONS_DIR else {}
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name not NNNN_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version}")
        sql = path.read_text(encoding="utf-8")
        found[version] = Migration(version, path.name, sql, steps.get(version))
    if orphans := sorted(set(steps) - set(found)):
        raise ValueError(f"Python steps for migrations that do not exist: {orphans}")
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


async def apply_migration(
    tx: Transaction, migration: Migration, translate: Callable[[str], str] = str
) -> None:
    """Run a migration's statements (each through ``translate``), then its step, in ``tx``."""
    for statement in split_statements(migration.sql):
        await tx.execute(translate(statement))
    if migration.step is not None:
        await migration.step(tx)
