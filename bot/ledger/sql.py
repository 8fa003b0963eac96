"""SQL helpers the parts of the ledger share: lists of values as one parameter, one
value read, and the example values their ``HOT_STATEMENTS`` are planned with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any, Literal

from bot.db import Database, Transaction
from bot.db.urls import Engine
from bot.ledger.periods import period_params

# Example values for planning statements (HOT_STATEMENTS): a moment and its period starts.
EXAMPLE_NOW = datetime(2026, 3, 11, 12, tzinfo=UTC)
EXAMPLE_PERIODS = period_params(EXAMPLE_NOW)
EXAMPLE_START = EXAMPLE_PERIODS["p_weekly"]


def sql_list(
    engine: Engine, values: Collection[Any], of: Literal["BIGINT", "TEXT"]
) -> tuple[str, Any]:
    """A list of values for SQL: a table of one column ``id`` to put in FROM or an IN
    subquery, and the value of its ``:ids`` parameter (an array on PostgreSQL, JSON on
    SQLite: one statement whatever the length)."""
    if engine == "postgresql":
        return f"(SELECT unnest(CAST(:ids AS {of}[])) AS id)", list(values)
    return "(SELECT value AS id FROM json_each(:ids))", json.dumps(list(values))


def listed(sql: str, of: Literal["BIGINT", "TEXT"]) -> Callable[[Engine], str]:
    """``sql`` with its ``{ids}`` list written for an engine (for :class:`HotStatement`)."""
    return lambda engine: sql.format(ids=sql_list(engine, (), of)[0])


def ids_param(of: Literal["BIGINT", "TEXT"], example: object) -> Callable[[Engine], Any]:
    """The ``:ids`` value of a one-element list, for planning a statement."""
    return lambda engine: sql_list(engine, [example], of)[1]


async def scalar(q: Transaction | Database, sql: str, params: Any) -> Any:
    """The first column of the first row ``sql`` returns, or None when it returns none."""
    row = await q.fetchone(sql, params)
    return None if row is None else row[0]
