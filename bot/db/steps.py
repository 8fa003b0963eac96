"""The Python steps of migrations: what a migration needs that portable SQL cannot do.

Each step runs right after its migration's SQL, in the same transaction, on either
engine, through the ordinary :class:`~bot.db.interface.Transaction`. A step is frozen in
time like the SQL beside it: it does not call the code that uses the schema today.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta

from bot.db.interface import MigrationStep, Transaction

_MIDNIGHT = " 00:00:00.000000"  # a day's start in the stored timestamp format
_EPOCH = "1970-01-01" + _MIDNIGHT  # the start of the "lifetime" period

# The rollups of migration 0009, from the entries: first per member (or guild) and UTC
# day, then each day joined to the starts of its periods, which the step writes into a
# small calendar table first. A member's rollups are for the latest period of each kind
# in which they reserved anything: the one that contains their latest such day. Their
# usage counter starts stale (since = ''), to be recounted on first use.
_PERIODS = ("daily", "weekly", "monthly", "lifetime")
_COUNTS = ("reservations", "credits", "failures", "refunds")
_CALENDAR = (
    "CREATE TABLE migration_calendar (day TEXT NOT NULL PRIMARY KEY, "
    + ", ".join(f"{p}_start TEXT NOT NULL" for p in _PERIODS)
    + ")"
)
_MEMBER_DAYS = (
    "SELECT guild_id, member_id, substr(created_at, 1, 10) AS day,"
    " COUNT(*) AS reservations, SUM(cost) AS credits,"
    " SUM(CASE WHEN state = 'refunded' THEN 1 ELSE 0 END) AS failures,"
    " SUM(CASE WHEN state = 'refunded' THEN cost ELSE 0 END) AS refunds"
    " FROM ledger_entries GROUP BY guild_id, member_id, substr(created_at, 1, 10)"
)
_MEMBER_ROLLUPS = (
    f"WITH d AS ({_MEMBER_DAYS}),"
    " latest AS (SELECT guild_id, member_id, MAX(day) AS day FROM d GROUP BY guild_id, member_id)"
    " INSERT INTO member_usage (guild_id, member_id, since, used, "
    + ", ".join(f"{p}_{c}" for p in _PERIODS for c in ("start", *_COUNTS))
    + ") SELECT d.guild_id, d.member_id, '', 0, "
    + ", ".join(
        f"lc.{p}_start, "
        + ", ".join(
            f"CAST(SUM(CASE WHEN c.{p}_start = lc.{p}_start THEN d.{c} ELSE 0 END) AS BIGINT)"
            for c in _COUNTS
        )
        for p in _PERIODS
    )
    + " FROM d JOIN migration_calendar c ON c.day = d.day"
    " JOIN latest l ON l.guild_id = d.guild_id AND l.member_id = d.member_id"
    " JOIN migration_calendar lc ON lc.day = l.day"
    " GROUP BY d.guild_id, d.member_id, " + ", ".join(f"lc.{p}_start" for p in _PERIODS)
)
_GUILD_PERIODS = (
    "WITH d AS (SELECT guild_id, substr(created_at, 1, 10) AS day,"
    " SUM(CASE WHEN state = 'refunded' THEN 0 ELSE cost END) AS used,"
    " SUM(CASE WHEN state = 'refunded' THEN cost ELSE 0 END) AS refunded"
    " FROM ledger_entries GROUP BY guild_id, substr(created_at, 1, 10))"
    " INSERT INTO guild_period_usage (period, period_start, guild_id, used, refunded) "
    + " UNION ALL ".join(
        f"SELECT '{p}', c.{p}_start, d.guild_id,"
        " CAST(SUM(d.used) AS BIGINT), CAST(SUM(d.refunded) AS BIGINT)"
        f" FROM d JOIN migration_calendar c ON c.day = d.day GROUP BY c.{p}_start, d.guild_id"
        for p in _PERIODS
    )
)


def _calendar_row(day: date) -> tuple[str, ...]:
    """A day and the starts of its daily, weekly (from Monday), monthly and lifetime
    periods, as stored."""
    return (
        day.isoformat(),
        f"{day.isoformat()}{_MIDNIGHT}",
        f"{(day - timedelta(days=day.weekday())).isoformat()}{_MIDNIGHT}",
        f"{day.replace(day=1).isoformat()}{_MIDNIGHT}",
        _EPOCH,
    )


async def backfill_usage_rollups(tx: Transaction) -> None:
    """Migration 0009: fill the rollups from every existing ledger entry."""
    row = await tx.fetchone("SELECT MIN(created_at), MAX(created_at) FROM ledger_entries")
    if row is None or row[0] is None:
        return  # a new database: nothing to sum
    first, last = date.fromisoformat(row[0][:10]), date.fromisoformat(row[1][:10])
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    await tx.execute(_CALENDAR)
    await tx.executemany(
        "INSERT INTO migration_calendar VALUES (?, ?, ?, ?, ?)", [_calendar_row(d) for d in days]
    )
    for statement in (_MEMBER_ROLLUPS, _GUILD_PERIODS):
        await tx.execute(statement)
    await tx.execute("DROP TABLE migration_calendar")


STEPS: Mapping[int, MigrationStep] = {9: backfill_usage_rollups}
