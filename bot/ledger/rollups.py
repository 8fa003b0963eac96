"""Running totals of the ledger (migration 0009), kept in the transaction that changes
the entries they sum, so no report or budget check reads a guild's history.

- ``member_rollups``: settled reservations (upscales, credits, failures, refunds) per
  member and period, for ``/usage``;
- ``guild_day_rollups``: settled credits per guild and UTC day, for the ``/usage`` chart;
- ``guild_period_usage``: live credits (reserved + committed) per guild and period, for
  the server budget and the owner's total budget.

Every row is keyed by the start of the period that contains its entries' ``created_at``
(:func:`bot.ledger.periods.period_starts`). A batch of settlements is summed here first,
so each rollup row changes once per batch; rows are written in key order, which is the
same in every transaction, so concurrent batches on PostgreSQL wait for each other's row
locks but never deadlock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from bot.db import HotStatement, Row, Transaction, ts
from bot.ledger.periods import period_starts
from bot.settings import PERIODS, Period

EXAMPLE_START = "2026-03-09 00:00:00.000000"  # a period start, for planning statements

ADD_SETTLED = (
    "INSERT INTO member_rollups"
    " (guild_id, period, period_start, member_id, upscales, credits, failures, refunds)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (guild_id, period, period_start, member_id) DO UPDATE SET"
    " upscales = member_rollups.upscales + excluded.upscales,"
    " credits = member_rollups.credits + excluded.credits,"
    " failures = member_rollups.failures + excluded.failures,"
    " refunds = member_rollups.refunds + excluded.refunds"
)
ADD_DAY = (
    "INSERT INTO guild_day_rollups (guild_id, day, delivered, refunded) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (guild_id, day) DO UPDATE SET"
    " delivered = guild_day_rollups.delivered + excluded.delivered,"
    " refunded = guild_day_rollups.refunded + excluded.refunded"
)
# One row per period, in one statement (a reservation batch has one created_at).
ADD_LIVE = (
    "INSERT INTO guild_period_usage (period, period_start, guild_id, used) VALUES "
    + ", ".join("(?, ?, ?, ?)" for _ in PERIODS)
    + " ON CONFLICT (period, period_start, guild_id)"
    " DO UPDATE SET used = guild_period_usage.used + excluded.used"
)
SUBTRACT_LIVE = (
    "UPDATE guild_period_usage SET used = used - ?"
    " WHERE period = ? AND period_start = ? AND guild_id = ?"
)
# The live credits of every guild in one period: the owner's total budget.
TOTAL_LIVE = (
    "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM guild_period_usage"
    " WHERE period = :period AND period_start = :start"
)
MEMBER_REPORT = (
    "SELECT member_id, CAST(SUM(upscales) AS BIGINT) AS upscales,"
    " CAST(SUM(credits) AS BIGINT) AS credits, CAST(SUM(failures) AS BIGINT) AS failures,"
    " CAST(SUM(refunds) AS BIGINT) AS refunds FROM member_rollups"
    " WHERE guild_id = ? AND period = ? AND period_start >= ?"
    " GROUP BY member_id ORDER BY credits DESC, member_id"
)
DAY_REPORT = (
    "SELECT day, delivered, refunded FROM guild_day_rollups"
    " WHERE guild_id = ? AND day >= ? ORDER BY day"
)

HOT_STATEMENTS: tuple[HotStatement, ...] = (
    HotStatement(
        "settle: member rollups", ADD_SETTLED, (1, "weekly", EXAMPLE_START, 2, 1, 1, 0, 0)
    ),
    HotStatement("settle: day rollups", ADD_DAY, (1, EXAMPLE_START[:10], 1, 0)),
    HotStatement(
        "reserve: live credits per period",
        ADD_LIVE,
        tuple(v for period in PERIODS for v in (period, EXAMPLE_START, 1, 1)),
    ),
    HotStatement("refund: live credits", SUBTRACT_LIVE, (1, "weekly", EXAMPLE_START, 1)),
    HotStatement("reserve: total budget", TOTAL_LIVE, {"period": "weekly", "start": EXAMPLE_START}),
    HotStatement("/usage: members", MEMBER_REPORT, (1, "weekly", EXAMPLE_START)),
    HotStatement("/usage: days", DAY_REPORT, (1, EXAMPLE_START[:10])),
)


def live_additions(
    guild_id: int, now: datetime, added: int, own: tuple[Period, int] | None = None
) -> list[object]:
    """The parameters of :data:`ADD_LIVE`: ``added`` credits reserved at ``now`` in every
    period, plus, for ``own = (period, used)``, a recount of the guild's period whose row
    is missing (it is then inserted with the recount, not added to)."""
    params: list[object] = []
    for period, start in period_starts(ts(now)):
        extra = own[1] if own is not None and own[0] == period else 0
        params += [period, start, guild_id, added + extra]
    return params


async def subtract_live(tx: Transaction, refunded: Iterable[Row]) -> None:
    """Take refunded entries off the live credits of their guilds' periods."""
    totals: defaultdict[tuple[str, str, int], int] = defaultdict(int)
    for r in refunded:
        for period, start in period_starts(r["created_at"]):
            totals[(period, start, int(r["guild_id"]))] += int(r["cost"])
    await tx.executemany(SUBTRACT_LIVE, [(cost, *key) for key, cost in sorted(totals.items())])


async def add_settled(tx: Transaction, committed: bool, rows: Sequence[Row]) -> None:
    """Add entries just committed (or refunded) to the member and day rollups."""
    counts: defaultdict[tuple[int, str, str, int], list[int]] = defaultdict(lambda: [0, 0])
    days: defaultdict[tuple[int, str], int] = defaultdict(int)
    for r in rows:
        guild_id, member_id, cost = int(r["guild_id"]), int(r["member_id"]), int(r["cost"])
        for period, start in period_starts(r["created_at"]):
            total = counts[(guild_id, period, start, member_id)]
            total[0] += 1
            total[1] += cost
        days[(guild_id, r["created_at"][:10])] += cost
    settled = sorted(counts.items())
    if committed:
        member_params = [(*key, n, credits, 0, 0) for key, (n, credits) in settled]
        day_params = [(*key, credits, 0) for key, credits in sorted(days.items())]
    else:
        member_params = [(*key, 0, 0, n, credits) for key, (n, credits) in settled]
        day_params = [(*key, 0, credits) for key, credits in sorted(days.items())]
    await tx.executemany(ADD_SETTLED, member_params)
    await tx.executemany(ADD_DAY, day_params)
