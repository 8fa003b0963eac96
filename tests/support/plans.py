"""Does a statement read through an index? Its plan, on either engine, says so.

:func:`table_scans` plans a :class:`bot.db.HotStatement` (SQLite ``EXPLAIN QUERY PLAN``;
PostgreSQL ``EXPLAIN (FORMAT JSON)``, which plans with the statement's parameters as the
bot's connections do) and reports every place where it reads one of the watched tables
without a bounding index condition:

- SQLite: ``SCAN <table>`` (the whole table, or the whole of an index), except through a
  partial index named in ``bounded`` (one whose rows are few by design, such as the
  reservations still in flight);
- PostgreSQL: a ``Seq Scan`` of the table, or an index scan with no index condition
  (again except through an index named in ``bounded``).

On PostgreSQL, plans depend on statistics: run ``ANALYZE`` after filling the tables.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from bot.db import Database, Engine, HotStatement, Transaction

# FROM/JOIN/UPDATE/INTO a table, and the alias it is given, if any (SQLite names the
# alias in its plans).
_SOURCE = re.compile(
    r"\b(?:FROM|JOIN|UPDATE|INTO)\s+([A-Za-z_]\w*)"
    r"(?:\s+(?:AS\s+)?(?!(?:WHERE|ON|JOIN|LEFT|INNER|CROSS|SET|GROUP|ORDER|LIMIT|USING"
    r"|VALUES|SELECT|DEFAULT|RETURNING|WITH)\b)([A-Za-z_]\w*))?",
    re.IGNORECASE,
)
_PLANS = itertools.count()
_SQLITE_SCAN = re.compile(r"^SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?")


@dataclass(frozen=True, slots=True)
class Scan:
    """One read of a watched table without a bounding index condition."""

    statement: str
    table: str
    plan: str  # the plan line (SQLite) or node (PostgreSQL) that says so

    def __str__(self) -> str:
        return f"{self.statement}: scans {self.table} ({self.plan})"


def _tables_by_name(sql: str) -> dict[str, str]:
    """The tables ``sql`` reads, by the name its plan uses for them (alias or table)."""
    names: dict[str, str] = {}
    for match in _SOURCE.finditer(sql):
        table, alias = match.group(1), match.group(2)
        names[table] = table
        if alias:
            names[alias] = table
    return names


async def sqlite_scans(
    q: Database | Transaction,
    statement: HotStatement,
    tables: Collection[str],
    bounded: Collection[str] = (),
) -> list[Scan]:
    sql = statement.text("sqlite")
    # A fresh text each time: the connection caches prepared statements, and a cached
    # EXPLAIN is not prepared again after the schema changes (it reads no table).
    explain = f"EXPLAIN QUERY PLAN {sql}\n-- {next(_PLANS)}"
    rows = await q.fetchall(explain, statement.parameters("sqlite"))
    names = _tables_by_name(sql)
    scans: list[Scan] = []
    for row in rows:
        detail = str(row[3])
        match = _SQLITE_SCAN.match(detail)
        if match is None:
            continue
        table = names.get(match.group(1), match.group(1))
        if table in tables and match.group(2) not in bounded:
            scans.append(Scan(statement.name, table, detail))
    return scans


def _nodes(
    node: dict[str, Any], parent: dict[str, Any] | None = None
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    yield node, parent
    for child in node.get("Plans", ()):
        yield from _nodes(child, node)


async def postgres_scans(
    q: Database | Transaction,
    statement: HotStatement,
    tables: Collection[str],
    bounded: Collection[str] = (),
) -> list[Scan]:
    sql = f"EXPLAIN (FORMAT JSON) {statement.text('postgresql')}"
    row = await q.fetchone(sql, statement.parameters("postgresql"))
    assert row is not None
    plan = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    scans: list[Scan] = []
    for node, parent in _nodes(plan[0]["Plan"]):
        kind = node["Node Type"]
        # A bitmap index scan names its index; its table is on the heap scan above it.
        table = node.get("Relation Name") or (parent or {}).get("Relation Name")
        if table not in tables:
            continue
        index = node.get("Index Name")
        unbounded_index = (
            kind in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
            and "Index Cond" not in node
            and index not in bounded
        )
        if kind == "Seq Scan" or unbounded_index:
            scans.append(Scan(statement.name, str(table), f"{kind} {index or ''}".strip()))
    return scans


async def table_scans(
    q: Database | Transaction,
    engine: Engine,
    statement: HotStatement,
    tables: Collection[str],
    bounded: Collection[str] = (),
) -> list[Scan]:
    """Where ``statement`` reads one of ``tables`` without a bounding index condition."""
    if engine == "postgresql":
        return await postgres_scans(q, statement, tables, bounded)
    return await sqlite_scans(q, statement, tables, bounded)
