"""The Python steps of migrations: what a migration needs that portable SQL cannot do.

Each step runs right after its migration's SQL, in the same transaction, on either
engine, through the ordinary :class:`~bot.db.interface.Transaction`. A step is frozen in
time like the SQL beside it: it does not call the code that uses the schema today.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta

from bot.db.interface import Transaction
from bot.db.migrations import MigrationStep

_MIDNIGHT = " 00:00:00.000000"  # a day's start in the stored timestamp format
_EPOCH = "1970-01-01" + _MIDNIGHT  # the start of the "lifetime" period

# The rollups of migration 0009, from the entries: first per member (or guild) and UTC
# day, then each day joined to the starts of its daily, weekly, monthly and lifetime
# periods, which the step writes into a small calendar table first.
_CALENDAR = (
    "CREATE TABLE migration_calendar (day TEXT NOT NULL, period TEXT NOT NULL,"
    " period_start TEXT NOT NULL, PRIMARY KEY (day, period))"
)
_MEMBER_ROLLUPS = (
    "INSERT INTO member_rollups"
    " (guild_id, period, period_start, member_id, upscales, credits, failures, refunds)"
    " SELECT d.guild_id, c.period, c.period_start, d.member_id,"
    " CAST(SUM(d.upscales) AS BIGINT), CAST(SUM(d.credits) AS BIGINT),"
    " CAST(SUM(d.failures) AS BIGINT), CAST(SUM(d.refunds) AS BIGINT)"
    " FROM (SELECT guild_id, member_id, substr(created_at, 1, 10) AS day,"
    "  SUM(CASE WHEN state = 'committed' THEN 1 ELSE 0 END) AS upscales,"
    "  SUM(CASE WHEN state = 'committed' THEN cost ELSE 0 END) AS credits,"
    "  SUM(CASE WHEN state = 'refunded' THEN 1 ELSE 0 END) AS failures,"
    "  SUM(CASE WHEN state = 'refunded' THEN cost ELSE 0 END) AS refunds"
    "  FROM ledger_entries WHERE state IN ('committed', 'refunded')"
    "  GROUP BY guild_id, member_id, substr(created_at, 1, 10)) d"
    " JOIN migration_calendar c ON c.day = d.day"
    " GROUP BY d.guild_id, c.period, c.period_start, d.member_id"
)
_GUILD_DAYS = (
    "INSERT INTO guild_day_rollups (guild_id, day, delivered, refunded)"
    " SELECT guild_id, substr(period_start, 1, 10),"
    " CAST(SUM(credits) AS BIGINT), CAST(SUM(refunds) AS BIGINT)"
    " FROM member_rollups WHERE period = 'daily' GROUP BY guild_id, period_start"
)
_GUILD_PERIODS = (
    "INSERT INTO guild_period_usage (period, period_start, guild_id, used)"
    " SELECT c.period, c.period_start, d.guild_id, CAST(SUM(d.used) AS BIGINT)"
    " FROM (SELECT guild_id, substr(created_at, 1, 10) AS day, SUM(cost) AS used"
    "  FROM ledger_entries WHERE state IN ('reserved', 'committed')"
    "  GROUP BY guild_id, substr(created_at, 1, 10)) d"
    " JOIN migration_calendar c ON c.day = d.day"
    " GROUP BY c.period, c.period_start, d.guild_id"
)


def _period_starts(day: date) -> list[tuple[str, str]]:
    """The (period, start) pairs of the periods containing ``day`` (weeks from Monday)."""
    return [
        ("daily", f"{day.isoformat()}{_MIDNIGHT}"),
        ("weekly", f"{(day - timedelta(days=day.weekday())).isoformat()}{_MIDNIGHT}"),
        ("monthly", f"{day.replace(day=1).isoformat()}{_MIDNIGHT}"),
        ("lifetime", _EPOCH),
    ]


async def backfill_usage_rollups(tx: Transaction) -> None:
    """Migration 0009: fill the rollups from every existing ledger entry."""
    row = await tx.fetchone("SELECT MIN(created_at), MAX(created_at) FROM ledger_entries")
    if row is None or row[0] is None:
        return  # a new database: nothing to sum
    first, last = date.fromisoformat(row[0][:10]), date.fromisoformat(row[1][:10])
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    await tx.execute(_CALENDAR)
    await tx.executemany(
        "INSERT INTO migration_calendar (day, period, period_start) VALUES (?, ?, ?)",
        [(day.isoformat(), period, start) for day in days for period, start in _period_starts(day)],
    )
    for statement in (_MEMBER_ROLLUPS, _GUILD_DAYS, _GUILD_PERIODS):
        await tx.execute(statement)
    await tx.execute("DROP TABLE migration_calendar")


STEPS: Mapping[int, MigrationStep] = {9: backfill_usage_rollups}
