"""The usage counters a reservation is decided from: two rows read, whatever the size of
the history.

A member's live credits this period (not marked by a ``/quota reset``) are their
``member_usage`` row (migration 0008; it also holds their rollups, see
:mod:`bot.ledger.rollups`) with the period start it counts from; the guild's
are its ``guild_period_usage`` row for its own period (migration 0009). A member row for
another period start, or a guild row that does not exist yet (a new period, a changed
period, entries older than the counters), is recounted from ``ledger_entries`` before it
is used: once per member and period, through the entries' indexes. Counters change only
under the guild's lock: reservations add, refunds subtract, resets recount.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from bot.db import Database, HotStatement, Transaction, ts
from bot.db.urls import Engine
from bot.ledger.periods import Period, period_params, period_start
from bot.ledger.sql import EXAMPLE_PERIODS, EXAMPLE_START, ids_param, listed, scalar, sql_list

LIVE = "e.state IN ('reserved', 'committed')"

# The guild's settings and its live credits in its current period: the four possible
# period starts are given (``:p_daily`` ...) and the guild's period picks one, so the
# check always uses the period stored in the database, even if another process just
# changed it.
GUILD = (
    "SELECT gs.period, gs.default_limit, gs.server_budget, u.used"
    " FROM guild_settings gs LEFT JOIN guild_period_usage u"
    " ON u.period = gs.period AND u.guild_id = gs.guild_id AND u.period_start ="
    " CASE gs.period WHEN 'daily' THEN :p_daily WHEN 'weekly' THEN :p_weekly"
    " WHEN 'monthly' THEN :p_monthly ELSE :p_lifetime END"
    " WHERE gs.guild_id = :g"
)
GUILD_RECOUNT = (
    "SELECT CAST(COALESCE(SUM(e.cost), 0) AS BIGINT) FROM ledger_entries e"
    f" WHERE e.guild_id = :g AND {LIVE} AND e.created_at >= :since"
)
# Per member of a list: the usage counter, the override and this period's grants.
MEMBERS = (
    "SELECT m.id AS member_id, u.since, u.used, ml.credit_limit AS override,"
    " (SELECT CAST(COALESCE(SUM(gr.amount), 0) AS BIGINT) FROM grants gr"
    "  WHERE gr.guild_id = :g AND gr.member_id = m.id AND gr.created_at >= :since) AS grants"
    " FROM {ids} m"
    " LEFT JOIN member_usage u ON u.guild_id = :g AND u.member_id = m.id"
    " LEFT JOIN member_limits ml ON ml.guild_id = :g AND ml.member_id = m.id"
)
MEMBER_RECOUNT = (
    "SELECT e.member_id, CAST(SUM(e.cost) AS BIGINT) AS used FROM ledger_entries e"
    " WHERE e.guild_id = :g AND e.member_id IN (SELECT id FROM {ids} s)"
    f" AND {LIVE} AND e.reset_at IS NULL AND e.created_at >= :since GROUP BY e.member_id"
)
ROLE_LIMITS = (
    "SELECT rl.role_id, rl.credit_limit FROM role_limits rl JOIN {ids} r"
    " ON r.id = rl.role_id WHERE rl.guild_id = :g"
)

HOT_STATEMENTS: tuple[HotStatement, ...] = (
    HotStatement("reserve: guild counter", GUILD, {"g": 1, **EXAMPLE_PERIODS}),
    HotStatement("reserve: guild recount", GUILD_RECOUNT, {"g": 1, "since": EXAMPLE_START}),
    HotStatement(
        "reserve: member counters",
        listed(MEMBERS, "BIGINT"),
        lambda engine: {"g": 1, "since": EXAMPLE_START, "ids": ids_param("BIGINT", 2)(engine)},
    ),
    HotStatement(
        "reserve: member recount",
        listed(MEMBER_RECOUNT, "BIGINT"),
        lambda engine: {"g": 1, "since": EXAMPLE_START, "ids": ids_param("BIGINT", 2)(engine)},
    ),
    HotStatement(
        "reserve: role limits",
        listed(ROLE_LIMITS, "BIGINT"),
        lambda engine: {"g": 1, "ids": ids_param("BIGINT", 3)(engine)},
    ),
)


@dataclass(frozen=True, slots=True)
class GuildState:
    """A guild's settings and live usage for the current period, read in a transaction."""

    period: Period
    since: str
    default_limit: int
    server_budget: int
    used: int
    stale: bool  # no guild_period_usage row for this period yet: recounted


@dataclass(frozen=True, slots=True)
class MemberState:
    used: int
    override: int | None
    grants: int
    stale: bool  # the member_usage row was not for this period: recounted


class UsageCounters:
    """Reading the usage counters (see the module docstring), in the caller's
    transaction or straight from the database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def guild(self, q: Transaction | Database, guild_id: int, now: datetime) -> GuildState:
        """The guild's settings and live credits this period (its counter, or a recount)."""
        row = await q.fetchone(GUILD, {"g": guild_id, **period_params(now)})
        assert row is not None, "the guild's settings row exists (callers ensure it)"
        period: Period = row["period"]
        since = ts(period_start(now, period))
        stale = row["used"] is None
        used = (
            int(await scalar(q, GUILD_RECOUNT, {"g": guild_id, "since": since}))
            if stale
            else int(row["used"])
        )
        return GuildState(
            period, since, int(row["default_limit"]), int(row["server_budget"]), used, stale
        )

    async def members(
        self, q: Transaction | Database, guild_id: int, since: str, member_ids: Collection[int]
    ) -> dict[int, MemberState]:
        """Each member's live credits this period (counter or recount), override, grants."""
        table, ids = sql_list(self._engine, sorted(set(member_ids)), "BIGINT")
        rows = await q.fetchall(
            MEMBERS.format(ids=table), {"g": guild_id, "since": since, "ids": ids}
        )
        stale = sorted(int(r["member_id"]) for r in rows if r["since"] != since)
        used = {int(r["member_id"]): int(r["used"] or 0) for r in rows}
        if stale:
            used.update(dict.fromkeys(stale, 0))  # members with no live entry recount to 0
            table, ids = sql_list(self._engine, stale, "BIGINT")
            recount = MEMBER_RECOUNT.format(ids=table)
            for r in await q.fetchall(recount, {"g": guild_id, "since": since, "ids": ids}):
                used[int(r["member_id"])] = int(r["used"])
        return {
            int(r["member_id"]): MemberState(
                used=used[int(r["member_id"])],
                override=None if r["override"] is None else int(r["override"]),
                grants=int(r["grants"]),
                stale=r["since"] != since,
            )
            for r in rows
        }

    async def role_limits(
        self, q: Transaction | Database, guild_id: int, role_ids: Collection[int]
    ) -> dict[int, int]:
        """The limits of those of ``role_ids`` that have one."""
        if not role_ids:
            return {}
        table, ids = sql_list(self._engine, sorted(set(role_ids)), "BIGINT")
        rows = await q.fetchall(ROLE_LIMITS.format(ids=table), {"g": guild_id, "ids": ids})
        return {int(r["role_id"]): int(r["credit_limit"]) for r in rows}
