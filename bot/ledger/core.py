"""What every part of the ledger works with, handed to each in one piece.

The parts of :class:`bot.ledger.Ledger` (:class:`~bot.ledger.reservations.Reservations`,
:class:`~bot.ledger.quota.QuotaChanges`, :class:`~bot.ledger.reports.Reports`) share the
database, the clock, the owner's :class:`Defaults`, the usage counters
(:class:`~bot.ledger.counters.UsageCounters`) and the guilds whose settings row exists;
the facade builds one :class:`LedgerCore` and gives it to each part. A part reads what is
here and calls no other part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bot.db import Database, HotStatement, Transaction, ts, utc_now
from bot.i18n import Text
from bot.ledger.counters import UsageCounters
from bot.ledger.periods import Period
from bot.ledger.sql import EXAMPLE_NOW
from bot.ledger.values import MAX_CREDITS, check_limit, check_period

ENSURE_GUILD = (
    "INSERT INTO guild_settings (guild_id, default_limit, period, created_at)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (guild_id) DO NOTHING"
)

HOT_STATEMENTS: tuple[HotStatement, ...] = (
    HotStatement("first use of a guild", ENSURE_GUILD, (1, 5, "daily", ts(EXAMPLE_NOW))),
)


@dataclass(frozen=True, slots=True)
class Defaults:
    """What the owner configured: a new guild's default limit and period, and the total
    budget of all guilds together (0 = none) with its period. A value out of range raises
    LedgerValueError."""

    limit: int
    period: Period
    total_budget: int = 0
    total_period: Period = "monthly"

    def __post_init__(self) -> None:
        check_limit(self.limit)
        check_period(self.period)
        check_limit(self.total_budget, Text.of("quota.invalid.total_budget", max=MAX_CREDITS))
        check_period(self.total_period)


class LedgerCore:
    """The database, clock, defaults and counters the ledger's parts share, and the
    guild's settings row created on first use."""

    def __init__(
        self, db: Database, defaults: Defaults, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.db = db
        self.defaults = defaults
        self.clock = clock
        self.counters = UsageCounters(db.engine)
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
            pending = asyncio.ensure_future(self.ensure_guild_row(guild_id))
            self._ensuring[guild_id] = pending
            pending.add_done_callback(lambda _: self._ensuring.pop(guild_id, None))
        await asyncio.shield(pending)

    async def ensure_guild_row(self, guild_id: int, tx: Transaction | None = None) -> None:
        """Create the guild's settings row with the configured defaults if it is missing,
        in ``tx`` if given (then it is not remembered: ``tx`` may still roll back)."""
        if guild_id in self._known_guilds:
            return
        defaults = self.defaults
        params = (guild_id, defaults.limit, defaults.period, ts(self.clock()))
        if tx is not None:
            await tx.execute(ENSURE_GUILD, params)
        else:
            await self.db.write(ENSURE_GUILD, params)
            self._known_guilds.add(guild_id)
