"""Reports: ``/usage`` (per member, totals, and credits per day) and the audit log.

``/usage`` reads the rollups (:mod:`bot.ledger.rollups`), never the entries, so a report
for any period, lifetime included, costs what the guild's members and days cost, not
what its history does. Resets do not hide anything here: the report is what was spent.
"""

from __future__ import annotations

from datetime import date

from bot.db import HotStatement, parse_ts, ts
from bot.ledger.base import LedgerBase
from bot.ledger.periods import check_period, period_start
from bot.ledger.rollups import DAY_REPORT, MEMBER_REPORT
from bot.ledger.values import AuditEntry, DayUsage, MemberUsage, UsageReport
from bot.settings import Period

AUDIT_LOG = (
    "SELECT actor_id, action, target, old_value, new_value, created_at FROM audit_log"
    " WHERE guild_id = ? ORDER BY id DESC LIMIT ?"
)
PERIOD_OF = "SELECT period FROM guild_settings WHERE guild_id = ?"
AUDIT_ROWS_SHOWN = 50  # the newest changes audit_log returns by default

# (The audit log is read by no command: not listed.)
HOT_STATEMENTS: tuple[HotStatement, ...] = (
    HotStatement("/usage: the guild's period", PERIOD_OF, (1,)),
)


class Reports(LedgerBase):
    """``/usage`` and the audit log."""

    async def usage(self, guild_id: int, period: Period | None = None) -> UsageReport:
        """Per-member upscales, credits, failures and refunds since the period began, and
        the guild's credits per day (delivered, refunded) over the same time.

        ``period`` defaults to the guild's own; an unknown one raises LedgerValueError.
        """
        if period:
            chosen = check_period(period)
        else:
            await self._ensure_guild(guild_id)
            row = await self._db.fetchone(PERIOD_OF, (guild_id,))
            assert row is not None, "the guild's settings row was just ensured"
            chosen = row["period"]
        since = period_start(self._clock(), chosen)
        rows = await self._db.fetchall(MEMBER_REPORT[chosen], (guild_id, ts(since)))
        members = [
            MemberUsage(r["member_id"], r["upscales"], r["credits"], r["failures"], r["refunds"])
            for r in rows
            if r["upscales"] or r["failures"]
        ]
        totals = MemberUsage(
            0,
            sum(m.upscales for m in members),
            sum(m.credits for m in members),
            sum(m.failures for m in members),
            sum(m.refunds for m in members),
        )
        day_rows = await self._db.fetchall(DAY_REPORT, (guild_id, ts(since)[:10]))
        days = [
            DayUsage(date.fromisoformat(r["day"]), int(r["delivered"]), int(r["refunded"]))
            for r in day_rows
            if r["delivered"] or r["refunded"]
        ]
        return UsageReport(chosen, since, members, totals, days)

    async def audit_log(self, guild_id: int, limit: int = AUDIT_ROWS_SHOWN) -> list[AuditEntry]:
        """The guild's most recent moderator changes, newest first."""
        rows = await self._db.fetchall(AUDIT_LOG, (guild_id, limit))
        return [
            AuditEntry(
                r["actor_id"],
                r["action"],
                r["target"],
                r["old_value"],
                r["new_value"],
                parse_ts(r["created_at"]),
            )
            for r in rows
        ]
