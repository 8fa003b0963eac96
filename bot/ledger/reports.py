"""Reports: ``/usage`` (per member, totals, and credits per day) and the audit log.

``/usage`` reads the rollups (:mod:`bot.ledger.rollups`) and the reservations still in
flight, never the history, so a report for any period, lifetime included, costs what the
guild's members and days cost, not what its history does. Resets do not hide anything
here: the report is what was spent.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date

from bot.db import HotStatement, parse_ts, ts
from bot.ledger.core import LedgerCore
from bot.ledger.periods import Period, period_start
from bot.ledger.rollups import DAY_REPORT, GUILD_PENDING, MEMBER_REPORT
from bot.ledger.values import AuditEntry, DayUsage, MemberUsage, UsageReport, check_period

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


class Reports:
    """``/usage`` and the audit log."""

    def __init__(self, core: LedgerCore) -> None:
        self._core = core
        self._db = core.db
        self._clock = core.clock

    async def usage(self, guild_id: int, period: Period | None = None) -> UsageReport:
        """Per-member upscales, credits, failures and refunds since the period began, and
        the guild's credits per day (delivered, refunded) over the same time.

        ``period`` defaults to the guild's own; an unknown one raises LedgerValueError.
        Delivered is what was reserved in the period, less what was refunded and what is
        still pending (not settled yet: reported once it is).
        """
        if period:
            chosen = check_period(period)
        else:
            await self._core.ensure_guild_row(guild_id)
            row = await self._db.fetchone(PERIOD_OF, (guild_id,))
            assert row is not None, "the guild's settings row was just ensured"
            chosen = row["period"]
        since = ts(period_start(self._clock(), chosen))
        pending_by_member: defaultdict[int, list[int]] = defaultdict(lambda: [0, 0])
        pending_by_day: defaultdict[str, int] = defaultdict(int)
        for r in await self._db.fetchall(GUILD_PENDING, (guild_id,)):
            if r["created_at"] >= since:
                pending = pending_by_member[int(r["member_id"])]
                pending[0] += 1
                pending[1] += int(r["cost"])
                pending_by_day[r["created_at"][:10]] += int(r["cost"])
        members: list[MemberUsage] = []
        for r in await self._db.fetchall(MEMBER_REPORT[chosen], (guild_id, since)):
            member_id = int(r["member_id"])
            pending_n, pending_credits = pending_by_member[member_id]
            upscales = int(r["reservations"]) - int(r["failures"]) - pending_n
            credits = int(r["credits"]) - int(r["refunds"]) - pending_credits
            failures, refunds = int(r["failures"]), int(r["refunds"])
            if upscales or failures:  # only pending reservations: nothing to report yet
                members.append(MemberUsage(member_id, upscales, credits, failures, refunds))
        members.sort(key=lambda m: (-m.credits, m.member_id))
        totals = MemberUsage(
            0,
            sum(m.upscales for m in members),
            sum(m.credits for m in members),
            sum(m.failures for m in members),
            sum(m.refunds for m in members),
        )
        days: list[DayUsage] = []
        for r in await self._db.fetchall(DAY_REPORT, (guild_id, since)):
            day = r["period_start"][:10]
            delivered = int(r["used"]) - pending_by_day[day]
            if delivered or r["refunded"]:
                days.append(DayUsage(date.fromisoformat(day), delivered, int(r["refunded"])))
        return UsageReport(chosen, parse_ts(since), members, totals, days)

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
