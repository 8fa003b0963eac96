"""What every part of the ledger shares: its database, clock and configured defaults,
the guild's settings row created on first use, and lists of values for SQL.

:class:`bot.ledger.Ledger` is made of the parts built on :class:`LedgerBase`
(reservations, quota changes, reports); each is a mixin that reads only what is here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any, Literal

from bot.db import Database, HotStatement, Transaction, ts, utc_now
from bot.db.urls import Engine
from bot.i18n import Text
from bot.ledger.periods import Period, period_params
from bot.ledger.values import MAX_CREDITS, check_limit, check_period

# Example values for planning statements (HOT_STATEMENTS): a moment and its period starts.
EXAMPLE_NOW = datetime(2026, 3, 11, 12, tzinfo=UTC)
EXAMPLE_PERIODS = period_params(EXAMPLE_NOW)
EXAMPLE_START = EXAMPLE_PERIODS["p_weekly"]

ENSURE_GUILD = (
    "INSERT INTO guild_settings (guild_id, default_limit, period, created_at)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (guild_id) DO NOTHING"
)


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


HOT_STATEMENTS: tuple[HotStatement, ...] = (
    HotStatement("first use of a guild", ENSURE_GUILD, (1, 5, "daily", ts(EXAMPLE_NOW))),
)


class LedgerBase:
    """The ledger's shared state (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        default_limit: int,
        default_period: Period,
        total_budget: int = 0,
        total_budget_period: Period = "monthly",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._db = db
        self._default_limit = check_limit(default_limit)
        self._default_period = check_period(default_period)
        self._total_budget = check_limit(
            total_budget, Text.of("quota.invalid.total_budget", max=MAX_CREDITS)
        )
        self._total_period = check_period(total_budget_period)
        self._clock = clock
        # Guilds whose settings row exists. Rows are never deleted, so this cannot go stale.
        self._known_guilds: set[int] = set()
        self._ensuring: dict[int, asyncio.Future[None]] = {}

    async def ensure_guild(self, guild_id: int) -> None:
        """Create the guild's settings row if it is missing (once per guild and process).

        A caller about to reserve inside its own transaction calls this first, so the
        reservation need not write the row (whose creation it could not remember: its
        transaction may still roll back).
        """
        if guild_id in self._known_guilds:
            return
        pending = self._ensuring.get(guild_id)
        if pending is None:  # concurrent callers (a burst) share one write
            pending = asyncio.ensure_future(self._ensure_guild(guild_id))
            self._ensuring[guild_id] = pending
            pending.add_done_callback(lambda _: self._ensuring.pop(guild_id, None))
        await asyncio.shield(pending)

    async def _ensure_guild(self, guild_id: int, tx: Transaction | None = None) -> None:
        """Create the guild's settings row with the configured defaults if it is missing."""
        if guild_id in self._known_guilds:
            return
        params = (guild_id, self._default_limit, self._default_period, ts(self._clock()))
        if tx is not None:
            await tx.execute(ENSURE_GUILD, params)  # the caller's transaction may still roll back
        else:
            await self._db.write(ENSURE_GUILD, params)
            self._known_guilds.add(guild_id)

    def _list(self, values: Collection[Any], of: Literal["BIGINT", "TEXT"]) -> tuple[str, Any]:
        return sql_list(self._db.engine, values, of)

    @staticmethod
    async def _scalar(q: Transaction | Database, sql: str, params: Any) -> Any:
        row = await q.fetchone(sql, params)
        return None if row is None else row[0]
