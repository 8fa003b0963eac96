"""Copy a SQLite database into a fresh PostgreSQL one (moving a bot to a fleet).

    python -m bot.app.copydb --from sqlite:///data/upscaler.db --to postgresql://bot@db/upscaler

The source is opened as the bot opens it (so it is first brought to the current schema),
the destination is created and migrated, and must hold no rows yet. Every table the two
have in common is copied whole (settings, limits, grants, ledger entries, audit log, jobs,
alerts ...), ids included, in one transaction; identity sequences then continue after the
highest id. Prints one line per table with the rows copied. URLs are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from bot.db import POSTGRES_SCHEMES, PostgresDatabase, SqliteDatabase, open_database

# Parents before children (foreign keys); tables not listed follow in name order.
TABLE_ORDER = ("guild_settings", "role_limits", "member_limits", "grants")
SKIPPED = frozenset({"schema_version"})


class CopyError(RuntimeError):
    """The copy cannot be made; the message says why."""


async def copy_database(
    src_url: str, dst_url: str, *, dst_schema: str | None = None
) -> dict[str, int]:
    """Copy every table of the SQLite ``src_url`` into the empty PostgreSQL ``dst_url``.

    ``dst_schema`` puts the copy in that schema (created if needed) instead of the
    default one. Returns the rows copied per table. Raises CopyError for a non-empty
    destination or a source table the destination does not have.
    """
    if not dst_url.startswith(POSTGRES_SCHEMES):
        raise CopyError("the destination must be a postgresql:// database")
    src = await open_database(src_url)
    try:
        dst = await open_database(dst_url, schema=dst_schema)
        try:
            if not isinstance(src, SqliteDatabase) or not isinstance(dst, PostgresDatabase):
                raise CopyError("copying goes from a sqlite:/// to a postgresql:// database")
            return await _copy(src, dst)
        finally:
            await dst.close()
    finally:
        await src.close()


async def _copy(src: SqliteDatabase, dst: PostgresDatabase) -> dict[str, int]:
    src_tables = {
        r["name"]
        for r in await src.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    dst_tables = {
        r["table_name"]
        for r in await dst.fetchall(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
    }
    missing = sorted(src_tables - dst_tables - SKIPPED)
    if missing:
        raise CopyError(f"the destination has no table {', '.join(missing)}")
    tables = [t for t in TABLE_ORDER if t in src_tables] + sorted(
        src_tables - set(TABLE_ORDER) - SKIPPED
    )
    copied: dict[str, int] = {}
    async with dst.pool.acquire() as conn, conn.transaction():
        for table in sorted(dst_tables - SKIPPED):
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
                raise CopyError(f"the destination is not empty (table {table} has rows)")
        for table in tables:
            columns = [r["name"] for r in await src.fetchall(f"PRAGMA table_info({table})")]
            rows = await src.fetchall(f"SELECT {', '.join(columns)} FROM {table}")
            records: list[tuple[Any, ...]] = [
                tuple(row[i] for i in range(len(columns))) for row in rows
            ]
            if records:
                await conn.copy_records_to_table(table, records=records, columns=columns)
            copied[table] = len(records)
        identities = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND is_identity = 'YES'"
        )
        for ident in identities:
            table, column = ident["table_name"], ident["column_name"]
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence($1, $2), max({column}))"
                f" FROM {table} HAVING max({column}) IS NOT NULL",
                table,
                column,
            )
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot.app.copydb",
        description="Copy the bot's SQLite database into a new, empty PostgreSQL database.",
    )
    parser.add_argument("--from", dest="src", required=True, help="sqlite:///path.db")
    parser.add_argument("--to", dest="dst", required=True, help="postgresql://...")
    parser.add_argument("--schema", help="PostgreSQL schema to copy into (default: public)")
    args = parser.parse_args(argv)
    try:
        copied = asyncio.run(copy_database(args.src, args.dst, dst_schema=args.schema))
    except (CopyError, ValueError) as exc:
        print(f"copy failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # connection refused, no such file ... (no URL in the message)
        print(f"copy failed: {type(exc).__name__}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for table, count in copied.items():
        print(f"{table}: {count} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
