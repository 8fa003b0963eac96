"""Running totals of the ledger (migration 0009), kept in the transaction that changes
the entries they sum, so no report or budget check reads a guild's history.

- A member's ``member_usage`` row (written by every reservation for its usage counter)
  also holds, for the latest daily, weekly, monthly and lifetime period in which the
  member reserved anything, the reservations and credits made and the failures and
  credits refunded (``/usage`` is always for the current period).
- ``guild_period_usage`` holds per guild and period the live credits (reserved +
  committed) and the refunded ones: the server budget, the owner's total budget, and
  (daily rows) the ``/usage`` chart.

Every sum is named by the start of the period that contains its entries' ``created_at``
(:func:`bot.ledger.periods.period_starts`). Only reservations and refunds write them, in
the statements they ran before the rollups existed; a commit changes no total: what was
reserved and is neither refunded nor still pending was delivered. Reports therefore take
the reservations still in flight (few, through a partial index) off the reserved totals.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from bot.db import HotStatement, Row, RowsInsert, Transaction, ts
from bot.ledger.periods import PERIODS, Period, period_starts
from bot.ledger.sql import EXAMPLE_PERIODS, EXAMPLE_START

_PARAMS_CACHED = 1024  # (day, sums) pairs whose member parameters are kept

Sums = tuple[int, int, int, int]  # reservations, credits, failures, refunds
COUNTS = ("reservations", "credits", "failures", "refunds")  # per period, in member_usage
_MEMBER_COLUMNS = (
    "guild_id",
    "member_id",
    "since",
    "used",
    *(f"{period}_{what}" for period in PERIODS for what in ("start", *COUNTS)),
)


def _roll(period: str, column: str) -> str:
    """``SET`` one rollup column of a member's row to what a reservation makes of it: the
    same period adds up, a later one starts over, an earlier one changes nothing."""
    old, new = f"member_usage.{period}_{column}", f"excluded.{period}_{column}"
    old_start, new_start = f"member_usage.{period}_start", f"excluded.{period}_start"
    same = old if column == "start" else f"{old} + {new}"
    return (
        f"{period}_{column} = CASE WHEN {new_start} = {old_start} THEN {same}"
        f" WHEN {new_start} > {old_start} THEN {new} ELSE {old} END"
    )


# A member's usage counter (``since``, ``used``: set) and rollups (added to).
SAVE_MEMBER = RowsInsert(
    "member_usage",
    tuple(
        (name, "TEXT" if name.endswith(("_start", "since")) else "BIGINT")
        for name in _MEMBER_COLUMNS
    ),
    "ON CONFLICT (guild_id, member_id) DO UPDATE SET since = excluded.since,"
    " used = excluded.used, "
    + ", ".join(_roll(period, what) for period in PERIODS for what in (*COUNTS, "start")),
)
# A refunded entry: its credits leave the usage counter (if it counted them: made since
# the counter's start and not reset) and join the refunds of its own periods.
REFUND_MEMBER = (
    "UPDATE member_usage SET used = used - CASE WHEN since <= :created THEN :counted ELSE 0 END, "
    + ", ".join(
        f"{period}_{what} = {period}_{what}"
        f" + CASE WHEN {period}_start = :{period} THEN :{amount} ELSE 0 END"
        for period in PERIODS
        for what, amount in (("failures", "one"), ("refunds", "cost"))
    )
    + " WHERE guild_id = :g AND member_id = :m"
)
# One row per period, in one statement (a reservation batch has one created_at).
ADD_LIVE = (
    "INSERT INTO guild_period_usage (period, period_start, guild_id, used, refunded) VALUES "
    + ", ".join("(?, ?, ?, ?, 0)" for _ in PERIODS)
    + " ON CONFLICT (period, period_start, guild_id)"
    " DO UPDATE SET used = guild_period_usage.used + excluded.used"
)
REFUND_LIVE = (
    "UPDATE guild_period_usage SET used = used - :cost, refunded = refunded + :cost"
    " WHERE period = :period AND period_start = :start AND guild_id = :g"
)
# The live credits of every guild in one period: the owner's total budget.
TOTAL_LIVE = (
    "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM guild_period_usage"
    " WHERE period = :period AND period_start = :start"
)
# Per period: the members who reserved in the period starting at ``?`` (or later, should
# the clock have stepped back).
MEMBER_REPORT: dict[Period, str] = {
    period: f"SELECT member_id, {', '.join(f'{period}_{c} AS {c}' for c in COUNTS)}"
    f" FROM member_usage WHERE guild_id = ? AND {period}_start >= ?"
    for period in PERIODS
}
DAY_REPORT = (
    "SELECT period_start, used, refunded FROM guild_period_usage"
    " WHERE guild_id = ? AND period = 'daily' AND period_start >= ? ORDER BY period_start"
)
GUILD_PENDING = (
    "SELECT member_id, cost, created_at FROM ledger_entries"
    " WHERE guild_id = ? AND state = 'reserved'"
)

_EXAMPLE_REFUND: dict[str, object] = {
    "created": EXAMPLE_START,
    "counted": 1,
    "one": 1,
    "cost": 1,
    "g": 1,
    "m": 2,
    **{period: EXAMPLE_START for period in PERIODS},
}
HOT_STATEMENTS: tuple[HotStatement, ...] = (
    SAVE_MEMBER.hot(
        "reserve: member counter and rollups",
        (1, 2, EXAMPLE_START, 1, *(v for _ in PERIODS for v in (EXAMPLE_START, 1, 1, 0, 0))),
    ),
    HotStatement("refund: member counter and rollups", REFUND_MEMBER, _EXAMPLE_REFUND),
    HotStatement(
        "reserve: live credits per period",
        ADD_LIVE,
        tuple(v for period in PERIODS for v in (period, EXAMPLE_START, 1, 1)),
    ),
    HotStatement(
        "refund: live credits",
        REFUND_LIVE,
        {"cost": 1, "period": "weekly", "start": EXAMPLE_START, "g": 1},
    ),
    HotStatement("reserve: total budget", TOTAL_LIVE, {"period": "weekly", "start": EXAMPLE_START}),
    *(
        HotStatement(f"/usage {period}: members", sql, (1, EXAMPLE_PERIODS[f"p_{period}"]))
        for period, sql in MEMBER_REPORT.items()
    ),
    HotStatement("/usage: days", DAY_REPORT, (1, EXAMPLE_START)),
    HotStatement("/usage: pending", GUILD_PENDING, (1,)),
)


@functools.lru_cache(maxsize=_PARAMS_CACHED)
def _period_sums(day: str, sums: Sums) -> tuple[object, ...]:
    """The period columns of :data:`SAVE_MEMBER` for ``sums`` made on ``day``."""
    return tuple(v for _, start in period_starts(day) for v in (start, *sums))


def member_row(
    guild_id: int, member_id: int, since: str, used: int, now: datetime, n: int, credits: int
) -> tuple[object, ...]:
    """A :data:`SAVE_MEMBER` row: the member's counter, and ``n`` reservations of
    ``credits`` in all made at ``now``."""
    return (guild_id, member_id, since, used, *_period_sums(ts(now), (n, credits, 0, 0)))


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


async def refund_rollups(tx: Transaction, refunded: Iterable[Row]) -> None:
    """Move refunded entries' credits from live to refunded in their guilds' periods, and
    from their members' counters to their members' refunds."""
    rows = list(refunded)
    live: defaultdict[tuple[str, str, int], int] = defaultdict(int)
    for r in rows:
        for period, start in period_starts(r["created_at"]):
            live[(period, start, int(r["guild_id"]))] += int(r["cost"])
    await tx.executemany(
        REFUND_LIVE,
        [{"cost": c, "period": p, "start": s, "g": g} for (p, s, g), c in sorted(live.items())],
    )
    await tx.executemany(
        REFUND_MEMBER,
        [
            {
                "created": r["created_at"],
                "counted": r["cost"] if r["reset_at"] is None else 0,
                "one": 1,
                "cost": r["cost"],
                "g": r["guild_id"],
                "m": r["member_id"],
                **dict(period_starts(r["created_at"])),
            }
            for r in rows
        ],
    )
