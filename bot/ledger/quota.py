"""Quota changes: what moderators set (limits, budget, period, log channel, grants,
resets), each written with its audit row in one transaction and returned as a
:class:`~bot.ledger.values.Change` (who changed what from what to what) for the guild's
quota log; and the once-per-period claim of a budget alert.

Limits: a member's limit is their override if any, else the most generous of their role
limits, else the guild default; plus this period's grants (which may be negative). A
guild may also have a server budget shared by everyone (0 = none); it counts what was
actually spent, so a member's ``/quota reset`` does not raise it. A guild's settings row
is created with the configured defaults on first use.

The settings are a table (:class:`Setting`): where each lives and how it is audited; one
method reads the old value and writes the new one for all of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.db import HotStatement, Transaction, ts
from bot.i18n import Text
from bot.ledger.core import LedgerCore
from bot.ledger.periods import period_params
from bot.ledger.rollups import SAVE_MEMBER, member_row
from bot.ledger.sql import EXAMPLE_PERIODS, EXAMPLE_START, scalar
from bot.ledger.values import (
    MAX_CREDITS,
    Change,
    GuildSettings,
    LedgerValueError,
    check_limit,
    check_period,
    guild_lock,
    is_int,
)

log = logging.getLogger(__name__)

INVALID_SERVER_BUDGET = Text.of("quota.invalid.server_budget", max=MAX_CREDITS)
INVALID_GRANT = Text.of("quota.invalid.grant", max=MAX_CREDITS)
INVALID_LOG_CHANNEL = Text.of("quota.invalid.log_channel")
MAX_ALERT_PERCENT = 1000  # budget alert thresholds are 1 % to this


@dataclass(frozen=True, slots=True)
class Setting:
    """One moderator setting: a column of the guild's row, or a limit per role or member
    (``key`` names the column of the role or member id)."""

    action: str  # the audit action; clearing a keyed setting is "clear_" + action
    table: str
    column: str
    key: str | None = None

    def target(self, key_id: int | None) -> str | None:
        """The audit target: ``role:<id>``, ``member:<id>``, or None for the guild."""
        return None if self.key is None else f"{self.key.removesuffix('_id')}:{key_id}"

    @property
    def where(self) -> str:
        return "guild_id = ?" if self.key is None else f"guild_id = ? AND {self.key} = ?"

    @property
    def read_sql(self) -> str:
        return f"SELECT {self.column} FROM {self.table} WHERE {self.where}"

    @property
    def write_sql(self) -> str:
        """Parameters: the key (guild id, then the role or member id), then the value."""
        if self.key is None:
            return f"UPDATE {self.table} SET {self.column} = :value WHERE guild_id = :g"
        return (
            f"INSERT INTO {self.table} (guild_id, {self.key}, {self.column})"
            f" VALUES (:g, :k, :value) ON CONFLICT (guild_id, {self.key})"
            f" DO UPDATE SET {self.column} = excluded.{self.column}"
        )

    @property
    def clear_sql(self) -> str:
        return f"DELETE FROM {self.table} WHERE {self.where}"


DEFAULT_LIMIT = Setting("default_limit", "guild_settings", "default_limit")
SERVER_BUDGET = Setting("server_budget", "guild_settings", "server_budget")
PERIOD = Setting("period", "guild_settings", "period")
LOG_CHANNEL = Setting("log_channel", "guild_settings", "log_channel_id")
ROLE_LIMIT = Setting("role_limit", "role_limits", "credit_limit", key="role_id")
MEMBER_LIMIT = Setting("member_limit", "member_limits", "credit_limit", key="member_id")
SETTINGS = (DEFAULT_LIMIT, SERVER_BUDGET, PERIOD, LOG_CHANNEL, ROLE_LIMIT, MEMBER_LIMIT)

# The guild's row with the start of its current period as ``gs.since`` (the guild's
# period picks one of the four starts given).
_GUILD = (
    "(SELECT guild_id, period, default_limit, server_budget,"
    " CASE period WHEN 'daily' THEN :p_daily WHEN 'weekly' THEN :p_weekly"
    " WHEN 'monthly' THEN :p_monthly ELSE :p_lifetime END AS since"
    " FROM guild_settings WHERE guild_id = :g) gs"
)
GRANTS = (
    "SELECT (SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM grants"
    " WHERE guild_id = :g AND member_id = :m AND created_at >= gs.since)"
    f" FROM {_GUILD}"
)
GRANT = (
    "INSERT INTO grants (guild_id, member_id, amount, period_start, actor_id, created_at)"
    " SELECT CAST(:g AS BIGINT), CAST(:m AS BIGINT), CAST(:amount AS BIGINT),"
    f" gs.since, CAST(:actor AS BIGINT), CAST(:now AS TEXT) FROM {_GUILD}"
)
RESET = (
    "UPDATE ledger_entries SET reset_at = :now"
    " WHERE guild_id = :g AND member_id = :m AND reset_at IS NULL AND created_at >= :since"
)
AUDIT = (
    "INSERT INTO audit_log (guild_id, actor_id, action, target, old_value, new_value,"
    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
CLAIM_ALERT = (
    "INSERT INTO budget_alerts (guild_id, period_start, threshold, created_at)"
    " SELECT CAST(:g AS BIGINT), gs.since, CAST(:threshold AS BIGINT),"
    f" CAST(:now AS TEXT) FROM {_GUILD} WHERE 1 = 1"  # WHERE: SQLite upsert syntax
    " ON CONFLICT (guild_id, period_start, threshold) DO NOTHING"
)
GUILD_ROW = (
    "SELECT default_limit, period, server_budget, log_channel_id FROM guild_settings"
    " WHERE guild_id = ?"
)
ROLE_ROWS = "SELECT role_id, credit_limit FROM role_limits WHERE guild_id = ?"
MEMBER_ROWS = "SELECT member_id, credit_limit FROM member_limits WHERE guild_id = ?"

_KEY = (1, 2)  # a guild and a role or member, for planning
HOT_STATEMENTS: tuple[HotStatement, ...] = (
    *(
        HotStatement(f"/quota: read {s.action}", s.read_sql, _KEY[: 2 if s.key else 1])
        for s in SETTINGS
    ),
    *(
        HotStatement(f"/quota: write {s.action}", s.write_sql, {"g": 1, "k": 2, "value": example})
        for s, example in zip(SETTINGS, (5, 50, "weekly", 7, 5, 5), strict=True)
    ),
    *(HotStatement(f"/quota: clear {s.action}", s.clear_sql, _KEY) for s in SETTINGS if s.key),
    HotStatement("/quota grant: this period's grants", GRANTS, {"g": 1, "m": 2, **EXAMPLE_PERIODS}),
    HotStatement(
        "/quota grant",
        GRANT,
        {"g": 1, "m": 2, "amount": 1, "actor": 3, "now": EXAMPLE_START, **EXAMPLE_PERIODS},
    ),
    HotStatement(
        "/quota reset", RESET, {"g": 1, "m": 2, "since": EXAMPLE_START, "now": EXAMPLE_START}
    ),
    HotStatement("/quota: audit row", AUDIT, (1, 2, "x", None, None, None, EXAMPLE_START)),
    HotStatement(
        "budget alert claim",
        CLAIM_ALERT,
        {"g": 1, "threshold": 80, "now": EXAMPLE_START, **EXAMPLE_PERIODS},
    ),
    HotStatement("/quota show: guild", GUILD_ROW, (1,)),
    HotStatement("/quota show: roles", ROLE_ROWS, (1,)),
    HotStatement("/quota show: members", MEMBER_ROWS, (1,)),
)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


class QuotaChanges:
    """Moderators' changes, the guild's settings, budget alert claims."""

    def __init__(self, core: LedgerCore) -> None:
        self._core = core
        self._db = core.db
        self._clock = core.clock
        self._counters = core.counters

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's limits (created with the configured defaults on first use)."""
        await self._core.ensure_guild_row(guild_id)
        row = await self._db.fetchone(GUILD_ROW, (guild_id,))
        assert row is not None
        roles = await self._db.fetchall(ROLE_ROWS, (guild_id,))
        members = await self._db.fetchall(MEMBER_ROWS, (guild_id,))
        return GuildSettings(
            guild_id=guild_id,
            default_limit=row["default_limit"],
            period=row["period"],
            server_budget=row["server_budget"],
            role_limits={r["role_id"]: r["credit_limit"] for r in roles},
            member_limits={m["member_id"]: m["credit_limit"] for m in members},
            log_channel_id=row["log_channel_id"],
        )

    async def _audit(self, tx: Transaction, guild_id: int, actor_id: int, change: Change) -> Change:
        values = (change.action, change.target, change.old_value, change.new_value)
        await tx.execute(AUDIT, (guild_id, actor_id, *values, ts(self._clock())))
        log.info(
            "Guild %d: %s %s %s -> %s by %d",
            *(guild_id, change.action, change.target or ""),
            *(change.old_value, change.new_value, actor_id),
        )
        return change

    async def _change(
        self,
        guild_id: int,
        actor_id: int,
        setting: Setting,
        value: object,
        key_id: int | None = None,
        *,
        clear: bool = False,
    ) -> Change:
        """Read a setting's old value, write (or clear) the new one and the audit row, in
        one transaction."""
        key = (guild_id,) if setting.key is None else (guild_id, key_id)
        async with self._db.transaction() as tx:
            await self._core.ensure_guild_row(guild_id, tx)
            old = await scalar(tx, setting.read_sql, key)
            if clear:
                await tx.execute(setting.clear_sql, key)
            else:
                await tx.execute(setting.write_sql, {"g": guild_id, "k": key_id, "value": value})
            action = f"clear_{setting.action}" if clear else setting.action
            change = Change(action, setting.target(key_id), _text(old), _text(value))
            return await self._audit(tx, guild_id, actor_id, change)

    async def set_default_limit(self, guild_id: int, actor_id: int, limit: int) -> Change:
        """Limit for members without an override or a limited role."""
        return await self._change(guild_id, actor_id, DEFAULT_LIMIT, check_limit(limit))

    async def set_server_budget(self, guild_id: int, actor_id: int, limit: int) -> Change:
        """Total credits the whole guild may spend per period (0 = no server budget)."""
        budget = check_limit(limit, INVALID_SERVER_BUDGET)
        return await self._change(guild_id, actor_id, SERVER_BUDGET, budget)

    async def set_period(self, guild_id: int, actor_id: int, period: str) -> Change:
        """The accounting period: daily, weekly, monthly or lifetime."""
        return await self._change(guild_id, actor_id, PERIOD, check_period(period))

    async def set_log_channel(self, guild_id: int, actor_id: int, channel_id: int | None) -> Change:
        """Where quota changes and budget alerts are posted (None stops posting)."""
        if channel_id is not None and (not is_int(channel_id) or channel_id <= 0):
            raise LedgerValueError(INVALID_LOG_CHANNEL)
        return await self._change(guild_id, actor_id, LOG_CHANNEL, channel_id)

    async def set_role_limit(
        self, guild_id: int, actor_id: int, role_id: int, limit: int
    ) -> Change:
        """Limit for members holding the role (a member gets their most generous role)."""
        return await self._change(guild_id, actor_id, ROLE_LIMIT, check_limit(limit), role_id)

    async def set_member_limit(
        self, guild_id: int, actor_id: int, member_id: int, limit: int
    ) -> Change:
        """A per-member override: beats role limits and the default."""
        return await self._change(guild_id, actor_id, MEMBER_LIMIT, check_limit(limit), member_id)

    async def clear_role_limit(self, guild_id: int, actor_id: int, role_id: int) -> Change:
        """Remove the role's limit (its members fall back to other roles or the default)."""
        return await self._change(guild_id, actor_id, ROLE_LIMIT, None, role_id, clear=True)

    async def clear_member_limit(self, guild_id: int, actor_id: int, member_id: int) -> Change:
        """Remove the member's override."""
        return await self._change(guild_id, actor_id, MEMBER_LIMIT, None, member_id, clear=True)

    async def grant(self, guild_id: int, actor_id: int, member_id: int, amount: int) -> Change:
        """One-off extra credits (negative takes away) for the current period.

        The audit row's old and new values are the member's grant total for the period.
        """
        if not is_int(amount) or amount == 0 or abs(amount) > MAX_CREDITS:
            raise LedgerValueError(INVALID_GRANT)
        now = self._clock()
        params = {"g": guild_id, "m": member_id, **period_params(now)}
        async with self._db.transaction() as tx:
            await self._core.ensure_guild_row(guild_id, tx)
            before = int(await scalar(tx, GRANTS, params))
            await tx.execute(GRANT, {**params, "amount": amount, "actor": actor_id, "now": ts(now)})
            change = Change("grant", f"member:{member_id}", str(before), str(before + amount))
            return await self._audit(tx, guild_id, actor_id, change)

    async def reset_member(self, guild_id: int, actor_id: int, member_id: int) -> Change:
        """Zero a member's usage for this period.

        Nothing is deleted: the period's entries are marked as reset, so they stop
        counting towards the member's limit but stay in reports and the server budget.
        A reservation still pending is marked too (settling it later changes nothing).
        """
        now = self._clock()
        async with self._db.transaction() as tx:
            await self._core.ensure_guild_row(guild_id, tx)
            await tx.lock(guild_lock(guild_id))  # the member's usage counter changes
            guild = await self._counters.guild(tx, guild_id, now)
            members = await self._counters.members(tx, guild_id, guild.since, [member_id])
            await tx.execute(
                RESET, {"g": guild_id, "m": member_id, "since": guild.since, "now": ts(now)}
            )
            reset = [member_row(guild_id, member_id, guild.since, 0, now, 0, 0)]
            await SAVE_MEMBER.run(tx, self._db.engine, reset)
            change = Change("reset_usage", f"member:{member_id}", str(members[member_id].used), "0")
            return await self._audit(tx, guild_id, actor_id, change)

    async def claim_budget_alert(self, guild_id: int, threshold_percent: int) -> bool:
        """True exactly once per guild, period and threshold: the caller posts the alert.

        Several processes may see a threshold crossed at once; only one claim succeeds.
        """
        if not is_int(threshold_percent) or not 0 < threshold_percent <= MAX_ALERT_PERCENT:
            raise ValueError(
                f"threshold_percent must be a whole number from 1 to {MAX_ALERT_PERCENT}"
            )
        await self._core.ensure_guild_row(guild_id)
        now = self._clock()
        params = {"g": guild_id, "threshold": threshold_percent, "now": ts(now)}
        claimed = await self._db.write(CLAIM_ALERT, {**params, **period_params(now)})
        return claimed == 1
