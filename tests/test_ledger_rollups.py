"""The ledger's rollups (migration 0009) always say what the entries say, on both engines.

``/usage`` and the owner's total budget read running totals instead of the entries. Each
test here compares them, after every step of a pseudo-random mix of reservations,
commits, refunds (alone and in batches, on time and days late), resets, period changes
and time passing, with the aggregate queries the ledger ran over the entries before the
rollups existed; one test starts from a database of version 8 filled with history.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bot.db import Database, ts
from bot.db.migrations import load_migrations
from bot.ledger import (
    PERIODS,
    DayUsage,
    Ledger,
    MemberUsage,
    Period,
    Reservation,
    UsageReport,
)
from bot.ledger.periods import period_start
from tests.support.databases import Databases
from tests.test_ledger import MOD, Clock, total_ledger

GUILDS = (1, 2)
MEMBERS = (11, 12, 13)
START = datetime(2026, 2, 20, 9, tzinfo=UTC)  # a Friday, nine days before March
TOTAL_BUDGET = 1_000  # high enough never to refuse: the figure is what is compared

# What /usage and the total budget read before the rollups: sums over the entries.
OLD_MEMBERS = (
    "SELECT member_id,"
    " CAST(SUM(CASE WHEN state = 'committed' THEN 1 ELSE 0 END) AS BIGINT) AS upscales,"
    " CAST(SUM(CASE WHEN state = 'committed' THEN cost ELSE 0 END) AS BIGINT) AS credits,"
    " CAST(SUM(CASE WHEN state = 'refunded' THEN 1 ELSE 0 END) AS BIGINT) AS failures,"
    " CAST(SUM(CASE WHEN state = 'refunded' THEN cost ELSE 0 END) AS BIGINT) AS refunds"
    " FROM ledger_entries WHERE guild_id = ? AND created_at >= ?"
    " GROUP BY member_id ORDER BY credits DESC, member_id"
)
OLD_DAYS = (
    "SELECT substr(created_at, 1, 10) AS day,"
    " CAST(SUM(CASE WHEN state = 'committed' THEN cost ELSE 0 END) AS BIGINT) AS delivered,"
    " CAST(SUM(CASE WHEN state = 'refunded' THEN cost ELSE 0 END) AS BIGINT) AS refunded"
    " FROM ledger_entries WHERE guild_id = ? AND created_at >= ?"
    " GROUP BY substr(created_at, 1, 10) ORDER BY day"
)
OLD_TOTAL = (
    "SELECT CAST(COALESCE(SUM(cost), 0) AS BIGINT) FROM ledger_entries"
    " WHERE state IN ('reserved', 'committed') AND created_at >= ?"
)


async def recounted_report(db: Database, guild: int, period: Period, now: datetime) -> UsageReport:
    """The report as the ledger made it from the entries before migration 9."""
    since = period_start(now, period)
    rows = await db.fetchall(OLD_MEMBERS, (guild, ts(since)))
    members = [MemberUsage(*(int(v) for v in r)) for r in rows if r["upscales"] or r["failures"]]
    totals = MemberUsage(0, *(sum(getattr(m, f) for m in members) for f in MEMBER_FIGURES))
    days = [
        DayUsage(date.fromisoformat(r["day"]), int(r["delivered"]), int(r["refunded"]))
        for r in await db.fetchall(OLD_DAYS, (guild, ts(since)))
        if r["delivered"] or r["refunded"]
    ]
    return UsageReport(period, since, members, totals, days)


MEMBER_FIGURES = ("upscales", "credits", "failures", "refunds")


async def assert_rollups_match_the_entries(
    db: Database, ledger: Ledger, clock: Clock, step: object
) -> None:
    for guild in GUILDS:
        for period in PERIODS:
            expected = await recounted_report(db, guild, period, clock.now)
            assert await ledger.usage(guild, period) == expected, (step, guild, period)
    for period in ("daily", "weekly", "monthly"):
        total = total_ledger(db, clock, TOTAL_BUDGET, period)
        since = period_start(clock.now, period)
        row = await db.fetchone(OLD_TOTAL, (ts(since),))
        assert row is not None
        usage = await total.total_usage()
        assert usage is not None and usage.used == int(row[0]), (step, period)


async def play(db: Database, ledger: Ledger, clock: Clock, steps: int, rng: random.Random) -> None:
    """``steps`` pseudo-random changes, each followed by the comparison."""
    pending: list[str] = []
    for step in range(steps):
        action = rng.choice(
            ("reserve",) * 5 + ("commit", "refund", "settle many", "reset", "period", "time")
        )
        guild, member = rng.choice(GUILDS), rng.choice(MEMBERS)
        if action == "reserve":
            outcome = await ledger.reserve(guild, member, (), rng.randint(1, 2))
            if isinstance(outcome, Reservation):
                pending.append(outcome.id)
        elif action in ("commit", "refund") and pending:
            rid = pending.pop(rng.randrange(len(pending)))
            assert await (ledger.commit(rid) if action == "commit" else ledger.refund(rid, "x"))
        elif action == "settle many" and pending:
            # One batch per outcome: several entries of a member, of several days.
            settles = [
                ledger.commit(rid) if rng.random() < 0.7 else ledger.refund(rid, "x")
                for rid in pending
            ]
            pending.clear()
            assert all(await asyncio.gather(*settles))
        elif action == "reset":
            await ledger.reset_member(guild, MOD, member)
        elif action == "period":
            await ledger.set_period(guild, MOD, rng.choice(PERIODS))
        elif action == "time":
            clock.now += timedelta(hours=rng.choice((6, 30, 30, 24 * 8)))
        await assert_rollups_match_the_entries(db, ledger, clock, (step, action))


async def test_usage_and_total_budget_match_the_entries_through_every_kind_of_change(
    db: Database,
) -> None:
    """From an empty ledger: after each of 150 mixed changes, every period's report, its
    days and every total-budget period equal the sums over the entries."""
    clock = Clock(START)
    ledger = Ledger(db, default_limit=8, default_period="daily", clock=clock)
    await play(db, ledger, clock, 150, random.Random(9))


def old_entry(i: int, rng: random.Random) -> tuple[Any, ...]:
    """An entry as a version-8 ledger left it: in the two months before START."""
    created = START - timedelta(minutes=rng.randrange(60 * 24 * 60))
    state = rng.choice(("committed",) * 6 + ("refunded", "refunded", "reserved"))
    reset = ts(created) if rng.random() < 0.1 else None
    guild, member = rng.choice(GUILDS), rng.choice(MEMBERS)
    return (f"old{i}", guild, member, rng.randint(1, 3), state, ts(created), reset)


async def test_a_ledger_migrated_from_version_8_reports_what_its_entries_say(
    databases: Databases,
) -> None:
    """A version-8 database with two months of entries is migrated: its rollups equal the
    sums over the entries at once, and after each of 100 further changes."""
    old = await databases.open(migrations=load_migrations()[:8])
    rng = random.Random(4)
    async with old.transaction() as tx:
        for guild in GUILDS:
            await tx.execute(
                "INSERT INTO guild_settings (guild_id, default_limit, period, created_at)"
                " VALUES (?, 8, 'weekly', ?)",
                (guild, ts(START - timedelta(days=90))),
            )
        await tx.executemany(
            "INSERT INTO ledger_entries"
            " (id, guild_id, member_id, cost, state, created_at, reset_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [old_entry(i, rng) for i in range(400)],
        )
    await databases.close_all()
    db = await databases.open()
    assert await db.version() == load_migrations()[-1].version
    clock = Clock(START)
    ledger = Ledger(db, default_limit=8, default_period="daily", clock=clock)
    await assert_rollups_match_the_entries(db, ledger, clock, "migrated")
    await play(db, ledger, clock, 100, random.Random(5))
