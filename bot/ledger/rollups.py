"""Running totals of the ledger (migration 0009), kept in the transaction that changes
the entries they sum, so no report or budget check reads a guild's history.

- ``member_rollups``: settled reservations (upscales, credits, failures, refunds) per
  member, for the latest daily, weekly, monthly and lifetime period in which the member
  had any (one row per member: ``/usage`` is always for the current period);
- ``guild_day_rollups``: settled credits per guild and UTC day, for the ``/usage`` chart;
- ``guild_period_usage``: live credits (reserved + committed) per guild and period, for
  the server budget and the owner's total budget.

Every sum is named by the start of the period that contains its entries' ``created_at``
(:func:`bot.ledger.periods.period_starts`). A batch of settlements is summed here first,
so a rollup row changes once per batch (per member and day); rows are written in key
order, which is the same in every transaction, so concurrent batches on PostgreSQL wait
for each other's row locks but never deadlock.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from bot.db import Engine, HotStatement, Row, RowsInsert, Transaction, ts
from bot.ledger.base import EXAMPLE_START
from bot.ledger.periods import period_starts
from bot.settings import PERIODS, Period

_PARAMS_CACHED = 1024  # (day, sums) pairs whose rollup parameters are kept

COUNTS = ("upscales", "credits", "failures", "refunds")  # per period, in member_rollups
_MEMBER_COLUMNS = (
    "guild_id",
    "member_id",
    *(f"{period}_{what}" for period in PERIODS for what in ("start", *COUNTS)),
)


def _roll(period: str, column: str) -> str:
    """``SET`` one column of a member's rollup to what the settled entries make of it: a
    sum of the same period adds up, a later period starts over, an earlier one (entries
    settled after their period ended) changes nothing."""
    old, new = f"member_rollups.{period}_{column}", f"excluded.{period}_{column}"
    old_start, new_start = f"member_rollups.{period}_start", f"excluded.{period}_start"
    same = old if column == "start" else f"{old} + {new}"
    return (
        f"{period}_{column} = CASE WHEN {new_start} = {old_start} THEN {same}"
        f" WHEN {new_start} > {old_start} THEN {new} ELSE {old} END"
    )


ADD_SETTLED = RowsInsert(
    "member_rollups",
    tuple((name, "TEXT" if name.endswith("_start") else "BIGINT") for name in _MEMBER_COLUMNS),
    "ON CONFLICT (guild_id, member_id) DO UPDATE SET "
    + ", ".join(_roll(period, what) for period in PERIODS for what in (*COUNTS, "start")),
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
# Per period: the members with settled use in the period starting at ``?`` (or later,
# should the clock have stepped back), most credits first.
MEMBER_REPORT: dict[Period, str] = {
    period: f"SELECT member_id, {', '.join(f'{period}_{c} AS {c}' for c in COUNTS)}"
    f" FROM member_rollups WHERE guild_id = ? AND {period}_start >= ?"
    " ORDER BY credits DESC, member_id"
    for period in PERIODS
}
DAY_REPORT = (
    "SELECT day, delivered, refunded FROM guild_day_rollups"
    " WHERE guild_id = ? AND day >= ? ORDER BY day"
)

HOT_STATEMENTS: tuple[HotStatement, ...] = (
    ADD_SETTLED.hot(
        "settle: member rollups", (1, 2, *(v for _ in PERIODS for v in (EXAMPLE_START, 1, 1, 0, 0)))
    ),
    HotStatement("settle: day rollups", ADD_DAY, (1, EXAMPLE_START[:10], 1, 0)),
    HotStatement(
        "reserve: live credits per period",
        ADD_LIVE,
        tuple(v for period in PERIODS for v in (period, EXAMPLE_START, 1, 1)),
    ),
    HotStatement("refund: live credits", SUBTRACT_LIVE, (1, "weekly", EXAMPLE_START, 1)),
    HotStatement("reserve: total budget", TOTAL_LIVE, {"period": "weekly", "start": EXAMPLE_START}),
    *(
        HotStatement(f"/usage {period}: members", sql, (1, EXAMPLE_START))
        for period, sql in MEMBER_REPORT.items()
    ),
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


Sums = tuple[int, int, int, int]  # upscales, credits, failures, refunds


@functools.lru_cache(maxsize=_PARAMS_CACHED)
def _period_sums(day: str, sums: Sums) -> tuple[object, ...]:
    """The period columns of :data:`ADD_SETTLED` for ``sums`` settled on ``day``."""
    return tuple(v for _, start in period_starts(day) for v in (start, *sums))


def _fold(days: list[tuple[str, Sums]]) -> tuple[object, ...]:
    """The period columns for one member's entries of several days, oldest first: each
    period keeps the sums of its latest start, as the database does (:func:`_roll`)."""
    latest: list[tuple[str, list[int]]] = []
    for day, sums in days:
        for i, (_, start) in enumerate(period_starts(day)):
            if i == len(latest) or start > latest[i][0]:
                latest[i : i + 1] = [(start, list(sums))]
            elif start == latest[i][0]:
                latest[i] = (start, [a + b for a, b in zip(latest[i][1], sums, strict=True)])
    return tuple(v for start, total in latest for v in (start, *total))


async def add_settled(
    tx: Transaction, engine: Engine, committed: bool, rows: Sequence[Row]
) -> None:
    """Add entries just committed (or refunded) to the member and day rollups: one row
    per member (a statement may not change a row twice) and one per guild and day."""
    counts: defaultdict[tuple[int, int, str], list[int]] = defaultdict(lambda: [0, 0])
    days: defaultdict[tuple[int, str], int] = defaultdict(int)
    for r in rows:
        guild_id, cost, day = r["guild_id"], r["cost"], r["created_at"][:10]
        total = counts[(guild_id, r["member_id"], day)]
        total[0] += 1
        total[1] += cost
        days[(guild_id, day)] += cost
    members: dict[tuple[int, int], list[tuple[str, Sums]]] = {}
    for (guild_id, member_id, day), (n, c) in sorted(counts.items()):
        sums: Sums = (n, c, 0, 0) if committed else (0, 0, n, c)
        members.setdefault((guild_id, member_id), []).append((day, sums))
    member_rows = [
        (*key, *(_period_sums(*settled[0]) if len(settled) == 1 else _fold(settled)))
        for key, settled in members.items()
    ]
    day_params = [
        (*key, credits, 0) if committed else (*key, 0, credits)
        for key, credits in sorted(days.items())
    ]
    await ADD_SETTLED.run(tx, engine, member_rows)
    await tx.executemany(ADD_DAY, day_params)
