"""The credit ledger on both engines: atomic limits, settlement, periods, moderation.

Tests using ``ledger`` or ``db`` run once on a fresh SQLite file and once on a fresh
PostgreSQL schema (fixtures in conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bot.db import Database
from bot.ledger import (
    Change,
    Denial,
    Ledger,
    LedgerValueError,
    Period,
    Reservation,
    ServerUsage,
    TotalUsage,
    period_end,
)
from bot.ledger.periods import period_start
from tests.support.databases import Databases

G, ALICE, BOB, MOD = 1, 11, 12, 99
ROLE_A, ROLE_B = 501, 502
NOON = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)  # a Sunday


class Clock:
    """A settable UTC clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOON)


@pytest.fixture
def ledger(db: Database, clock: Clock) -> Ledger:
    return Ledger(db, default_limit=5, default_period="daily", clock=clock)


async def reserve_ok(ledger: Ledger, member: int = ALICE, roles: tuple[int, ...] = ()) -> str:
    outcome = await ledger.reserve(G, member, roles, 1)
    assert isinstance(outcome, Reservation), outcome
    return outcome.id


async def spend(ledger: Ledger, credits: int, member: int = ALICE) -> None:
    for _ in range(credits):
        await ledger.commit(await reserve_ok(ledger, member))


async def used(ledger: Ledger, member: int = ALICE) -> int:
    return (await ledger.balance(G, member, ())).used


# -- atomicity -------------------------------------------------------------------------


async def test_200_concurrent_reserves_never_pass_the_member_limit(ledger: Ledger) -> None:
    """200 simultaneous reserves for a member with 5 credits left give exactly 5."""
    await ledger.set_member_limit(G, MOD, ALICE, 8)
    await spend(ledger, 3)
    outcomes = await asyncio.gather(*(ledger.reserve(G, ALICE, (), 1) for _ in range(200)))
    assert sum(isinstance(o, Reservation) for o in outcomes) == 5
    assert {o.reason for o in outcomes if isinstance(o, Denial)} == {"member_limit"}
    assert await used(ledger) == 8


async def test_200_concurrent_reserves_never_pass_the_server_budget(ledger: Ledger) -> None:
    """With a budget of 7, 200 reserves spread over 40 members give exactly 7."""
    await ledger.set_server_budget(G, MOD, 7)
    outcomes = await asyncio.gather(*(ledger.reserve(G, 1000 + i % 40, (), 1) for i in range(200)))
    assert sum(isinstance(o, Reservation) for o in outcomes) == 7
    assert {o.reason for o in outcomes if isinstance(o, Denial)} == {"server_budget"}


async def test_two_connections_to_one_database_share_the_limit(
    databases: Databases, clock: Clock
) -> None:
    """Two connections (as two processes would have) together still give exactly 5."""
    first, second = await databases.open(), await databases.open()
    ledgers = [
        Ledger(d, default_limit=5, default_period="daily", clock=clock) for d in (first, second)
    ]
    outcomes = await asyncio.gather(*(ledgers[i % 2].reserve(G, ALICE, (), 1) for i in range(60)))
    assert sum(isinstance(o, Reservation) for o in outcomes) == 5


async def test_period_changed_by_another_process_applies_at_once(
    databases: Databases, clock: Clock
) -> None:
    """A ledger sees a period another connection set, without a restart."""
    first, second = await databases.open(), await databases.open()
    mine = Ledger(first, default_limit=5, default_period="daily", clock=clock)
    other = Ledger(second, default_limit=5, default_period="daily", clock=clock)
    clock.now = datetime(2026, 3, 18, 12, tzinfo=UTC)  # a Wednesday
    await spend(mine, 5)
    clock.now += timedelta(days=1)
    await reserve_ok(mine)  # a new day under "daily"
    await other.set_period(G, MOD, "weekly")
    assert isinstance(await mine.reserve(G, ALICE, (), 1), Denial)


# -- settlement ------------------------------------------------------------------------


async def test_refund_returns_the_credits_at_once(ledger: Ledger) -> None:
    """A refunded reservation no longer counts as used and the member can reserve again."""
    ids = [await reserve_ok(ledger) for _ in range(5)]
    assert isinstance(await ledger.reserve(G, ALICE, (), 1), Denial)
    assert await ledger.refund(ids[0], "unavailable")
    assert await used(ledger) == 4
    await reserve_ok(ledger)


async def test_pending_counts_as_used_until_settled(ledger: Ledger) -> None:
    """A reservation shows as used and pending; once committed it is used, not pending."""
    rid = await reserve_ok(ledger)
    before = await ledger.balance(G, ALICE, ())
    assert (before.used, before.pending, before.remaining) == (1, 1, 4)
    await ledger.commit(rid)
    after = await ledger.balance(G, ALICE, ())
    assert (after.used, after.pending, after.remaining) == (1, 0, 4)


async def test_commit_is_idempotent(ledger: Ledger) -> None:
    """Committing twice charges once; only the first call reports a change."""
    rid = await reserve_ok(ledger)
    assert await ledger.commit(rid) is True
    assert await ledger.commit(rid) is False
    assert await used(ledger) == 1


async def test_refund_is_idempotent(ledger: Ledger) -> None:
    """Refunding twice refunds once; only the first call reports a change."""
    rid = await reserve_ok(ledger)
    assert await ledger.refund(rid, "unavailable") is True
    assert await ledger.refund(rid, "unavailable") is False
    assert await used(ledger) == 0


async def test_refund_after_commit_changes_nothing(ledger: Ledger) -> None:
    """A delivered (committed) upscale stays charged: a late refund returns False."""
    rid = await reserve_ok(ledger)
    await ledger.commit(rid)
    assert await ledger.refund(rid, "late") is False
    assert await used(ledger) == 1


async def test_commit_after_refund_changes_nothing(ledger: Ledger) -> None:
    """A refunded reservation cannot be charged afterwards."""
    rid = await reserve_ok(ledger)
    await ledger.refund(rid, "timeout")
    assert await ledger.commit(rid) is False
    assert await used(ledger) == 0


async def test_settling_an_unknown_reservation_does_nothing(ledger: Ledger) -> None:
    """commit and refund of an id that does not exist return False."""
    assert await ledger.commit("nope") is False
    assert await ledger.refund("nope", "x") is False


async def test_refund_joins_the_callers_transaction(ledger: Ledger, db: Database) -> None:
    """A refund inside a transaction that then fails is rolled back with it."""
    rid = await reserve_ok(ledger)
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await ledger.refund(rid, "x", tx=tx)
            raise RuntimeError("the job update failed")
    assert (await ledger.balance(G, ALICE, ())).pending == 1


async def test_unsettled_reservations_are_refunded_at_start_up(
    ledger: Ledger, db: Database, clock: Clock
) -> None:
    """Reservations left by a crash are refunded, except those of jobs being taken over."""
    await ledger.reserve(G, ALICE, (), 1, job_id="job-a")
    await ledger.reserve(G, ALICE, (), 1, job_id="job-b")
    await ledger.reserve(G, BOB, (), 1)
    await ledger.commit(await reserve_ok(ledger, BOB))
    restarted = Ledger(db, default_limit=5, default_period="daily", clock=clock)
    refunded = await restarted.refund_unsettled(exclude_job_ids={"job-b"})
    assert sorted((r.member_id, r.job_id or "") for r in refunded) == [(ALICE, "job-a"), (BOB, "")]
    assert await used(restarted, ALICE) == 1
    assert await used(restarted, BOB) == 1


# -- limits ----------------------------------------------------------------------------


async def test_new_guild_takes_the_configured_defaults(ledger: Ledger) -> None:
    """First use in a guild creates it with DEFAULT_USER_LIMIT and LIMIT_PERIOD."""
    settings = await ledger.guild_settings(777)
    assert (settings.default_limit, settings.period, settings.server_budget) == (5, "daily", 0)


async def test_override_beats_roles_and_default(ledger: Ledger) -> None:
    """A member override wins over a more generous role limit and the default."""
    await ledger.set_role_limit(G, MOD, ROLE_A, 50)
    await ledger.set_member_limit(G, MOD, ALICE, 2)
    assert (await ledger.balance(G, ALICE, (ROLE_A,))).limit == 2


async def test_most_generous_role_wins(ledger: Ledger) -> None:
    """Without an override, the best of the member's role limits applies."""
    await ledger.set_role_limit(G, MOD, ROLE_A, 3)
    await ledger.set_role_limit(G, MOD, ROLE_B, 8)
    assert (await ledger.balance(G, ALICE, (ROLE_A, ROLE_B))).limit == 8


async def test_role_limit_can_be_below_the_default(ledger: Ledger) -> None:
    """A role limit replaces the default even when it is smaller."""
    await ledger.set_role_limit(G, MOD, ROLE_A, 1)
    assert (await ledger.balance(G, ALICE, (ROLE_A,))).limit == 1


async def test_roles_without_a_limit_fall_back_to_the_default(ledger: Ledger) -> None:
    """Holding only roles that have no limit leaves the guild default."""
    await ledger.set_role_limit(G, MOD, ROLE_A, 9)
    assert (await ledger.balance(G, ALICE, (ROLE_B, 12345))).limit == 5


async def test_role_limit_is_enforced_by_reserve(ledger: Ledger) -> None:
    """reserve applies the role limit, not only balance."""
    await ledger.set_role_limit(G, MOD, ROLE_A, 2)
    await reserve_ok(ledger, roles=(ROLE_A,))
    await reserve_ok(ledger, roles=(ROLE_A,))
    assert isinstance(await ledger.reserve(G, ALICE, (ROLE_A,), 1), Denial)


async def test_cleared_override_falls_back_to_the_role(ledger: Ledger) -> None:
    """Clearing a member override gives the member their role limit again."""
    await ledger.set_role_limit(G, MOD, ROLE_A, 9)
    await ledger.set_member_limit(G, MOD, ALICE, 1)
    await ledger.clear_member_limit(G, MOD, ALICE)
    assert (await ledger.balance(G, ALICE, (ROLE_A,))).limit == 9


async def test_cleared_role_limit_falls_back_to_the_default(ledger: Ledger) -> None:
    """Clearing a role limit gives its members the guild default again."""
    await ledger.set_role_limit(G, MOD, ROLE_A, 9)
    await ledger.clear_role_limit(G, MOD, ROLE_A)
    assert (await ledger.balance(G, ALICE, (ROLE_A,))).limit == 5


async def test_grants_add_to_the_override(ledger: Ledger) -> None:
    """Grants (positive and negative) add to whichever limit applies."""
    await ledger.set_member_limit(G, MOD, ALICE, 10)
    await ledger.grant(G, MOD, ALICE, 3)
    await ledger.grant(G, MOD, ALICE, -1)
    assert (await ledger.balance(G, ALICE, ())).limit == 12


async def test_grants_expire_with_the_period(ledger: Ledger, clock: Clock) -> None:
    """A grant counts for the period it was made in only."""
    await ledger.grant(G, MOD, ALICE, 3)
    clock.now += timedelta(days=1)
    assert (await ledger.balance(G, ALICE, ())).limit == 5


async def test_grant_lets_a_member_at_the_limit_reserve_again(ledger: Ledger) -> None:
    """After a grant, reserve accepts credits beyond the base limit."""
    await spend(ledger, 5)
    await ledger.grant(G, MOD, ALICE, 1)
    await reserve_ok(ledger)


async def test_negative_grant_below_zero_blocks_the_member(ledger: Ledger) -> None:
    """Taking away more than the limit leaves a limit of 0 and every reserve refused."""
    await ledger.grant(G, MOD, ALICE, -8)
    assert (await ledger.balance(G, ALICE, ())).limit == 0
    denial = await ledger.reserve(G, ALICE, (), 1)
    assert isinstance(denial, Denial) and (denial.reason, denial.limit) == ("member_limit", 0)


async def test_grant_made_today_still_counts_after_switching_to_weekly(
    ledger: Ledger, clock: Clock
) -> None:
    """Grants, like usage, count when made inside the current period's window."""
    clock.now = datetime(2026, 3, 18, 12, tzinfo=UTC)  # a Wednesday
    await ledger.grant(G, MOD, ALICE, 4)
    await ledger.set_period(G, MOD, "weekly")
    assert (await ledger.balance(G, ALICE, ())).limit == 9


async def test_reset_zeroes_usage_this_period(ledger: Ledger) -> None:
    """After /quota reset the member's used count is 0 and they can spend again."""
    await spend(ledger, 5)
    await ledger.reset_member(G, MOD, ALICE)
    assert await used(ledger) == 0
    await reserve_ok(ledger)


async def test_usage_after_a_reset_in_the_same_instant_counts(ledger: Ledger) -> None:
    """Reservations made at the very moment of a reset still count towards the limit."""
    await ledger.reset_member(G, MOD, ALICE)  # the clock does not move in this test
    await spend(ledger, 5)
    assert isinstance(await ledger.reserve(G, ALICE, (), 1), Denial)


async def test_reset_keeps_the_history_for_reports(ledger: Ledger) -> None:
    """A reset does not delete anything: /usage still shows what was spent."""
    await spend(ledger, 3)
    await ledger.reset_member(G, MOD, ALICE)
    assert (await ledger.usage(G)).totals.credits == 3


async def test_reset_does_not_raise_the_server_budget(ledger: Ledger) -> None:
    """The server budget counts what was spent, whatever resets a moderator made."""
    await ledger.set_server_budget(G, MOD, 3)
    await spend(ledger, 3)
    await ledger.reset_member(G, MOD, ALICE)
    denial = await ledger.reserve(G, ALICE, (), 1)
    assert isinstance(denial, Denial) and denial.reason == "server_budget"


async def test_reservation_pending_at_reset_stays_zeroed_when_committed(ledger: Ledger) -> None:
    """A job in flight during a reset is not counted again when it is delivered."""
    rid = await reserve_ok(ledger)
    await ledger.reset_member(G, MOD, ALICE)
    await ledger.commit(rid)
    assert await used(ledger) == 0


async def test_reset_touches_only_that_member(ledger: Ledger) -> None:
    """Resetting alice leaves bob's usage alone."""
    await spend(ledger, 2, ALICE)
    await spend(ledger, 2, BOB)
    await ledger.reset_member(G, MOD, ALICE)
    assert await used(ledger, BOB) == 2


async def test_denial_says_when_the_period_resets(ledger: Ledger) -> None:
    """A member at their limit is told used, limit and the reset time (next UTC midnight)."""
    await spend(ledger, 5)
    denial = await ledger.reserve(G, ALICE, (), 1)
    assert denial == Denial("member_limit", 5, 5, datetime(2026, 3, 16, tzinfo=UTC))


async def test_server_budget_denial_names_the_budget(ledger: Ledger) -> None:
    """When the budget binds, the denial gives the server's usage and budget."""
    await ledger.set_server_budget(G, MOD, 2)
    await spend(ledger, 2, BOB)
    denial = await ledger.reserve(G, ALICE, (), 1)
    assert denial == Denial("server_budget", 2, 2, datetime(2026, 3, 16, tzinfo=UTC))


async def test_lifetime_denial_has_no_reset_time(ledger: Ledger) -> None:
    """Under the lifetime period a refused member is told it never resets."""
    await ledger.set_period(G, MOD, "lifetime")
    await spend(ledger, 5)
    denial = await ledger.reserve(G, ALICE, (), 1)
    assert isinstance(denial, Denial) and denial.resets_at is None


async def test_cost_larger_than_one_is_checked_whole(ledger: Ledger) -> None:
    """A cost of 3 with 2 credits left is refused rather than partly reserved."""
    await spend(ledger, 3)
    assert isinstance(await ledger.reserve(G, ALICE, (), 3), Denial)
    assert isinstance(await ledger.reserve(G, ALICE, (), 2), Reservation)


@pytest.mark.parametrize("cost", [0, -1, True, 1_000_001])
async def test_invalid_cost_is_a_programming_error(ledger: Ledger, cost: Any) -> None:
    """reserve refuses a cost that is not a positive whole number of credits."""
    with pytest.raises(ValueError):
        await ledger.reserve(G, ALICE, (), cost)


# -- moderation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "args", "message"),
    [
        ("set_default_limit", (-1,), "between 0 and 1,000,000"),
        ("set_default_limit", (1_000_001,), "between 0 and 1,000,000"),
        ("set_server_budget", (-5,), "server budget"),
        ("set_period", ("hourly",), "daily, weekly, monthly or lifetime"),
        ("grant", (ALICE, 0), "non-zero"),
        ("grant", (ALICE, 2_000_000), "non-zero"),
        ("grant", (ALICE, -2_000_000), "non-zero"),
        ("set_member_limit", (ALICE, -3), "between 0"),
        ("set_role_limit", (ROLE_A, -3), "between 0"),
    ],
)
async def test_invalid_values_are_refused(
    ledger: Ledger, call: str, args: tuple[Any, ...], message: str
) -> None:
    """Negative limits, absurd amounts and unknown periods raise LedgerValueError."""
    with pytest.raises(LedgerValueError, match=message):
        await getattr(ledger, call)(G, MOD, *args)
    assert await ledger.audit_log(G) == []


async def test_usage_with_an_unknown_period_is_refused(ledger: Ledger) -> None:
    """/usage with a made-up period raises LedgerValueError."""
    with pytest.raises(LedgerValueError):
        await ledger.usage(G, "yearly")  # type: ignore[arg-type]  # not a Period, on purpose


CHANGES = [
    ("set_default_limit", (7,), ("default_limit", None, "5", "7")),
    ("set_server_budget", (40,), ("server_budget", None, "0", "40")),
    ("set_period", ("monthly",), ("period", None, "daily", "monthly")),
    ("set_role_limit", (ROLE_A, 20), ("role_limit", f"role:{ROLE_A}", None, "20")),
    ("clear_role_limit", (ROLE_B,), ("clear_role_limit", f"role:{ROLE_B}", "4", None)),
    ("set_member_limit", (ALICE, 3), ("member_limit", f"member:{ALICE}", None, "3")),
    ("clear_member_limit", (BOB,), ("clear_member_limit", f"member:{BOB}", "6", None)),
    ("grant", (BOB, -2), ("grant", f"member:{BOB}", "1", "-1")),
    ("reset_member", (BOB,), ("reset_usage", f"member:{BOB}", "2", "0")),
    ("set_log_channel", (777,), ("log_channel", None, None, "777")),
]


async def changed_setup(ledger: Ledger) -> None:
    await ledger.set_role_limit(G, 1, ROLE_B, 4)
    await ledger.set_member_limit(G, 1, BOB, 6)
    await ledger.grant(G, 1, BOB, 1)
    await spend(ledger, 2, BOB)


@pytest.mark.parametrize(("call", "args", "expected"), CHANGES)
async def test_each_moderator_change_is_audited(
    ledger: Ledger, clock: Clock, call: str, args: tuple[Any, ...], expected: tuple[Any, ...]
) -> None:
    """Every change writes who, what, target, old and new value, and when."""
    await changed_setup(ledger)
    clock.now += timedelta(minutes=1)
    await getattr(ledger, call)(G, MOD, *args)
    entry = (await ledger.audit_log(G))[0]
    assert (entry.action, entry.target, entry.old_value, entry.new_value) == expected
    assert (entry.actor_id, entry.created_at) == (MOD, clock.now)


async def test_audit_log_is_newest_first_and_per_guild(ledger: Ledger) -> None:
    """audit_log lists a guild's own changes, most recent first."""
    await ledger.set_default_limit(G, MOD, 7)
    await ledger.set_default_limit(G, MOD, 9)
    await ledger.set_default_limit(2, MOD, 1)
    entries = await ledger.audit_log(G)
    assert [(e.old_value, e.new_value) for e in entries] == [("7", "9"), ("5", "7")]


async def test_guild_settings_lists_overrides(ledger: Ledger) -> None:
    """guild_settings returns the role limits and member overrides set."""
    await ledger.set_role_limit(G, MOD, ROLE_A, 20)
    await ledger.set_member_limit(G, MOD, ALICE, 3)
    settings = await ledger.guild_settings(G)
    assert (settings.role_limits, settings.member_limits) == ({ROLE_A: 20}, {ALICE: 3})


# -- reports ---------------------------------------------------------------------------


async def test_usage_report_counts_credits_failures_and_refunds(ledger: Ledger) -> None:
    """The report has committed upscales and credits, failed reservations and refunds."""
    await spend(ledger, 2, ALICE)
    await ledger.refund(await reserve_ok(ledger, BOB), "unavailable")
    report = await ledger.usage(G)
    by_member = {m.member_id: m for m in report.members}
    assert (by_member[ALICE].upscales, by_member[ALICE].credits) == (2, 2)
    assert (by_member[BOB].failures, by_member[BOB].refunds) == (1, 1)
    assert (report.totals.upscales, report.totals.credits, report.totals.failures) == (2, 2, 1)


async def test_usage_report_lists_top_members_first(ledger: Ledger) -> None:
    """Members are ordered by credits spent, most first."""
    await spend(ledger, 1, ALICE)
    await spend(ledger, 3, BOB)
    assert [m.member_id for m in (await ledger.usage(G)).members] == [BOB, ALICE]


async def test_usage_report_for_another_period(ledger: Ledger, clock: Clock) -> None:
    """Asking for the monthly report includes earlier days of the month."""
    await spend(ledger, 2)
    clock.now += timedelta(days=1)
    await spend(ledger, 1)
    assert (await ledger.usage(G)).totals.credits == 1
    monthly = await ledger.usage(G, "monthly")
    assert (monthly.totals.credits, monthly.since) == (3, datetime(2026, 3, 1, tzinfo=UTC))


# -- periods ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "period", "start", "end"),
    [
        ("2026-01-31T23:59:59.999999", "daily", "2026-01-31", "2026-02-01"),
        ("2026-03-01T00:00:00", "daily", "2026-03-01", "2026-03-02"),
        ("2026-11-29T23:59:59", "weekly", "2026-11-23", "2026-11-30"),  # Sunday
        ("2026-11-30T00:00:00", "weekly", "2026-11-30", "2026-12-07"),  # Monday
        ("2026-01-31T12:00:00", "monthly", "2026-01-01", "2026-02-01"),
        ("2026-04-30T23:59:59", "monthly", "2026-04-01", "2026-05-01"),
        ("2028-02-29T12:00:00", "monthly", "2028-02-01", "2028-03-01"),  # leap day
        ("2028-02-29T12:00:00", "daily", "2028-02-29", "2028-03-01"),
        ("2027-02-28T12:00:00", "daily", "2027-02-28", "2027-03-01"),  # not a leap year
        ("2026-12-31T23:59:59", "monthly", "2026-12-01", "2027-01-01"),  # year end
        ("2026-12-31T23:59:59", "daily", "2026-12-31", "2027-01-01"),
        ("2026-12-31T23:59:59", "weekly", "2026-12-28", "2027-01-04"),  # week spans years
    ],
)
def test_period_boundaries(now: str, period: Any, start: str, end: str) -> None:
    """Periods start at UTC midnight / Monday / the 1st and end where the next begins."""
    moment = datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert period_start(moment, period) == datetime.fromisoformat(start).replace(tzinfo=UTC)
    assert period_end(moment, period) == datetime.fromisoformat(end).replace(tzinfo=UTC)


def test_lifetime_never_resets() -> None:
    """The lifetime period starts at the epoch and has no end."""
    moment = datetime(2026, 5, 5, tzinfo=UTC)
    assert period_start(moment, "lifetime") == datetime(1970, 1, 1, tzinfo=UTC)
    assert period_end(moment, "lifetime") is None


def test_period_uses_utc_whatever_the_input_zone() -> None:
    """23:30 on the 31st in UTC-5 is already the 1st in UTC: the new month has begun."""
    moment = datetime(2026, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert period_start(moment, "monthly") == datetime(2026, 2, 1, tzinfo=UTC)


def test_naive_datetimes_are_refused() -> None:
    """A datetime without a zone would mean the machine's zone: refused."""
    with pytest.raises(ValueError):
        period_start(datetime(2026, 1, 1), "daily")


def test_unknown_period_is_refused() -> None:
    """period_start rejects a period it does not know."""
    with pytest.raises(ValueError):
        period_start(NOON, "hourly")  # type: ignore[arg-type]  # not a Period, on purpose


@pytest.fixture
def odd_local_timezone() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Kiritimati"  # UTC+14
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.mark.usefixtures("odd_local_timezone")
def test_period_maths_ignores_the_machine_timezone() -> None:
    """With the machine in UTC+14, a UTC Sunday evening is still in the UTC week."""
    assert time.localtime(NOON.timestamp()).tm_gmtoff == 14 * 3600  # the odd zone is in effect
    moment = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)  # already Monday in Kiritimati
    assert period_start(moment, "weekly") == datetime(2026, 11, 23, tzinfo=UTC)
    assert period_end(moment, "daily") == datetime(2026, 11, 30, tzinfo=UTC)


@pytest.mark.usefixtures("odd_local_timezone")
async def test_daily_rollover_ignores_the_machine_timezone(ledger: Ledger, clock: Clock) -> None:
    """With the machine in UTC+14, usage still resets at UTC midnight, not local."""
    clock.now = datetime(2026, 3, 15, 23, 0, tzinfo=UTC)
    await spend(ledger, 5)
    clock.now = datetime(2026, 3, 15, 23, 59, 59, tzinfo=UTC)
    assert isinstance(await ledger.reserve(G, ALICE, (), 1), Denial)
    clock.now = datetime(2026, 3, 16, 0, 0, tzinfo=UTC)
    await reserve_ok(ledger)


async def test_weekly_usage_resets_on_monday(ledger: Ledger, clock: Clock) -> None:
    """Under "weekly", Sunday's usage counts until Monday 00:00 UTC, then it is gone."""
    await ledger.set_period(G, MOD, "weekly")
    clock.now = datetime(2026, 3, 22, 23, 59, tzinfo=UTC)  # Sunday
    await spend(ledger, 5)
    clock.now = datetime(2026, 3, 23, 0, 0, tzinfo=UTC)  # Monday
    assert await used(ledger) == 0


async def test_monthly_balance_resets_on_the_first(ledger: Ledger, clock: Clock) -> None:
    """Under "monthly", /credits reports the 1st of next month as the reset time."""
    await ledger.set_period(G, MOD, "monthly")
    clock.now = datetime(2028, 2, 29, 23, 0, tzinfo=UTC)
    assert (await ledger.balance(G, ALICE, ())).resets_at == datetime(2028, 3, 1, tzinfo=UTC)


async def test_period_change_applies_to_the_current_accounting(
    ledger: Ledger, clock: Clock
) -> None:
    """Switching to weekly counts the whole week's usage, not just today's."""
    clock.now = datetime(2026, 3, 18, 12, tzinfo=UTC)  # a Wednesday
    await spend(ledger, 3)
    clock.now += timedelta(days=1)
    assert await used(ledger) == 0
    await ledger.set_period(G, MOD, "weekly")
    assert await used(ledger) == 3


# -- usage counters: always what a recount of the entries says ------------------------


async def recount(db: Database, guild: int, member: int | None, since: datetime) -> int:
    """Live credits from the entries themselves (a member's: not reset), for comparison."""
    sql = (
        "SELECT CAST(COALESCE(SUM(cost), 0) AS BIGINT) FROM ledger_entries"
        " WHERE guild_id = ? AND state IN ('reserved', 'committed') AND created_at >= ?"
    )
    params: list[Any] = [guild, since.strftime("%Y-%m-%d %H:%M:%S.%f")]
    if member is not None:
        sql += " AND member_id = ? AND reset_at IS NULL"
        params.append(member)
    row = await db.fetchone(sql, params)
    assert row is not None
    return int(row[0])


async def test_refund_of_last_periods_reservation_leaves_this_periods_usage(
    ledger: Ledger, clock: Clock
) -> None:
    """A job from yesterday refunded today gives nothing back to today's usage."""
    old = await reserve_ok(ledger)
    clock.now += timedelta(days=1)
    await spend(ledger, 2)
    assert await ledger.refund(old, "failed")
    assert await used(ledger) == 2
    assert (await ledger.server_usage(G)).used == 2


async def test_refund_of_a_reservation_pending_at_a_reset_leaves_the_member_at_zero(
    ledger: Ledger,
) -> None:
    """A job in flight during a reset that then fails does not push usage below zero,
    but gives its credit back to the server's usage."""
    rid = await reserve_ok(ledger)
    await ledger.reset_member(G, MOD, ALICE)
    assert await ledger.refund(rid, "failed")
    assert await used(ledger) == 0
    assert (await ledger.server_usage(G)).used == 0
    await spend(ledger, 5)


async def test_entries_written_before_the_usage_counters_still_count(
    ledger: Ledger, db: Database, clock: Clock
) -> None:
    """A ledger migrated from a version without counters (entries, no counter rows) is
    recounted on first use: nobody gets their period's credits again."""
    await ledger.guild_settings(G)
    stamp = clock.now.strftime("%Y-%m-%d %H:%M:%S.%f")
    async with db.transaction() as tx:
        for i in range(4):
            await tx.execute(
                "INSERT INTO ledger_entries (id, guild_id, member_id, cost, state, created_at)"
                " VALUES (?, ?, ?, 1, 'committed', ?)",
                (f"old{i}", G, ALICE, stamp),
            )
    assert await used(ledger) == 4
    await reserve_ok(ledger)
    assert isinstance(await ledger.reserve(G, ALICE, (), 1), Denial)
    assert (await ledger.server_usage(G)).used == 5


async def test_usage_counters_match_a_recount_through_every_kind_of_change(
    db: Database, clock: Clock
) -> None:
    """Reserves, commits, refunds, resets, grants, period changes and days passing, in a
    fixed pseudo-random order: after each step the counters equal a recount."""
    rng = random.Random(8)
    ledger = Ledger(db, default_limit=6, default_period="daily", clock=clock)
    members = (ALICE, BOB, 13)
    pending: list[str] = []
    for step in range(300):
        action = rng.choice(("reserve",) * 6 + ("commit", "refund", "reset", "period", "day"))
        member = rng.choice(members)
        if action == "reserve":
            outcome = await ledger.reserve(G, member, (), rng.randint(1, 2))
            if isinstance(outcome, Reservation):
                pending.append(outcome.id)
        elif action in ("commit", "refund") and pending:
            rid = pending.pop(rng.randrange(len(pending)))
            settled = await (ledger.commit(rid) if action == "commit" else ledger.refund(rid, "x"))
            assert settled
        elif action == "reset":
            await ledger.reset_member(G, MOD, member)
        elif action == "period":
            await ledger.set_period(G, MOD, rng.choice(("daily", "weekly", "monthly", "lifetime")))
        elif action == "day":
            clock.now += timedelta(hours=rng.choice((6, 30)))
        settings = await ledger.guild_settings(G)
        since = period_start(clock.now, settings.period)
        for m in members:
            assert (await ledger.balance(G, m, ())).used == await recount(db, G, m, since), step
        assert (await ledger.server_usage(G)).used == await recount(db, G, None, since), step


# -- quota log: change records, log channel, budget alerts ----------------------------


@pytest.mark.parametrize(("call", "args", "expected"), CHANGES)
async def test_each_moderator_change_returns_what_it_audited(
    ledger: Ledger, call: str, args: tuple[Any, ...], expected: tuple[Any, ...]
) -> None:
    """The Change a method returns is the action, target, old and new value it audited."""
    await changed_setup(ledger)
    change = await getattr(ledger, call)(G, MOD, *args)
    assert change == Change(*expected)


async def test_log_channel_is_set_and_cleared(ledger: Ledger) -> None:
    """set_log_channel shows in guild_settings; None stops posting and is audited too."""
    await ledger.set_log_channel(G, MOD, 2**60)
    assert (await ledger.guild_settings(G)).log_channel_id == 2**60
    change = await ledger.set_log_channel(G, MOD, None)
    assert change == Change("log_channel", None, str(2**60), None)
    assert (await ledger.guild_settings(G)).log_channel_id is None


async def test_server_usage_reports_live_credits_and_the_budget(ledger: Ledger) -> None:
    """server_usage counts reserved and committed credits of every member, with the budget."""
    await ledger.set_server_budget(G, MOD, 10)
    await spend(ledger, 2, ALICE)
    await reserve_ok(ledger, BOB)
    assert await ledger.server_usage(G) == ServerUsage(used=3, budget=10)


async def test_budget_alert_is_claimed_once_per_threshold(ledger: Ledger) -> None:
    """The first claim of a threshold wins, later ones do not; 80 and 100 are separate."""
    assert await ledger.claim_budget_alert(G, 80) is True
    assert await ledger.claim_budget_alert(G, 80) is False
    assert await ledger.claim_budget_alert(G, 100) is True
    assert await ledger.claim_budget_alert(2, 80) is True


async def test_budget_alert_can_be_claimed_again_next_period(ledger: Ledger, clock: Clock) -> None:
    """A threshold claimed today is claimable again after the daily period rolls over."""
    assert await ledger.claim_budget_alert(G, 80)
    clock.now += timedelta(days=1)
    assert await ledger.claim_budget_alert(G, 80)


async def test_concurrent_budget_alert_claims_have_one_winner(
    databases: Databases, clock: Clock
) -> None:
    """Twenty claims from two connections at once: exactly one returns True."""
    first, second = await databases.open(), await databases.open()
    ledgers = [
        Ledger(d, default_limit=5, default_period="daily", clock=clock) for d in (first, second)
    ]
    await ledgers[0].guild_settings(G)
    claims = await asyncio.gather(*(ledgers[i % 2].claim_budget_alert(G, 100) for i in range(20)))
    assert claims.count(True) == 1


# -- the owner's total budget ----------------------------------------------------------


def total_ledger(db: Database, clock: Clock, budget: int = 7, period: Period = "monthly") -> Ledger:
    return Ledger(
        db,
        default_limit=100,
        default_period="daily",
        total_budget=budget,
        total_budget_period=period,
        clock=clock,
    )


async def test_200_concurrent_reserves_in_40_guilds_never_pass_the_total_budget(
    db: Database, clock: Clock
) -> None:
    """With a total budget of 7, 200 reserves spread over 40 guilds give exactly 7."""
    ledger = total_ledger(db, clock)
    outcomes = await asyncio.gather(
        *(ledger.reserve(100 + i % 40, ALICE, (), 1) for i in range(200))
    )
    assert sum(isinstance(o, Reservation) for o in outcomes) == 7
    assert {o.reason for o in outcomes if isinstance(o, Denial)} == {"total_budget"}


async def test_total_budget_denial_reports_the_total_period(db: Database, clock: Clock) -> None:
    """The denial gives the total used, the cap and the start of next month."""
    ledger = total_ledger(db, clock, budget=3)
    for guild in (1, 2, 3):
        assert isinstance(await ledger.reserve(guild, ALICE, (), 1), Reservation)
    denial = await ledger.reserve(4, ALICE, (), 1)
    assert denial == Denial("total_budget", 3, 3, datetime(2026, 4, 1, tzinfo=UTC))


async def test_refunds_give_back_total_budget(db: Database, clock: Clock) -> None:
    """A refunded reservation no longer counts towards the total budget."""
    ledger = total_ledger(db, clock, budget=1)
    first = await ledger.reserve(1, ALICE, (), 1)
    assert isinstance(first, Reservation)
    assert isinstance(await ledger.reserve(2, BOB, (), 1), Denial)
    await ledger.refund(first.id, "failed")
    assert isinstance(await ledger.reserve(2, BOB, (), 1), Reservation)


async def test_total_budget_resets_with_its_own_period(db: Database, clock: Clock) -> None:
    """A monthly total budget spent on March 31st is available again on April 1st."""
    ledger = total_ledger(db, clock, budget=2)
    clock.now = datetime(2026, 3, 31, 23, 0, tzinfo=UTC)
    spent = await ledger.reserve(1, ALICE, (), 2)
    assert isinstance(spent, Reservation)
    await ledger.commit(spent.id)
    assert isinstance(await ledger.reserve(2, BOB, (), 1), Denial)
    clock.now = datetime(2026, 4, 1, tzinfo=UTC)
    assert isinstance(await ledger.reserve(2, BOB, (), 1), Reservation)


async def test_total_budget_counts_what_a_process_without_it_reserved(
    databases: Databases, clock: Clock
) -> None:
    """A process of the fleet that does not enforce TOTAL_BUDGET still counts towards it:
    what it reserves (and refunds) is seen by a process that enforces the budget."""
    first, second = await databases.open(), await databases.open()
    capped = total_ledger(first, clock, budget=5)
    uncapped = Ledger(second, default_limit=100, default_period="daily", clock=clock)
    spent = [await uncapped.reserve(1, ALICE, (), 1) for _ in range(4)]
    assert await capped.total_usage() == TotalUsage(4, 5, datetime(2026, 4, 1, tzinfo=UTC))
    assert isinstance(await capped.reserve(2, BOB, (), 1), Reservation)
    assert isinstance(await capped.reserve(2, BOB, (), 1), Denial)
    assert isinstance(spent[0], Reservation)
    await uncapped.refund(spent[0].id, "failed")
    assert isinstance(await capped.reserve(2, BOB, (), 1), Reservation)


async def test_total_usage_is_none_without_a_cap(ledger: Ledger) -> None:
    """With no total budget configured, total_usage returns None."""
    assert await ledger.total_usage() is None


async def test_total_usage_counts_every_guild(db: Database, clock: Clock) -> None:
    """total_usage sums live credits of all guilds, with the cap and the reset time."""
    ledger = total_ledger(db, clock, budget=50)
    await ledger.reserve(1, ALICE, (), 2)
    await ledger.reserve(2, BOB, (), 3)
    assert await ledger.total_usage() == TotalUsage(5, 50, datetime(2026, 4, 1, tzinfo=UTC))


# -- reserving inside the caller's transaction ----------------------------------------


async def test_reservation_commits_with_the_callers_transaction(
    ledger: Ledger, db: Database
) -> None:
    """A reservation made with tx= exists once the caller's transaction commits."""
    async with db.transaction() as tx:
        outcome = await ledger.reserve(G, ALICE, (), 2, job_id="job", tx=tx)
    assert isinstance(outcome, Reservation)
    assert (await ledger.balance(G, ALICE, ())).pending == 2


async def test_reservation_rolls_back_with_the_callers_transaction(
    ledger: Ledger, db: Database
) -> None:
    """A reservation made with tx= disappears when the caller's block raises."""
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            assert isinstance(await ledger.reserve(G, ALICE, (), 2, tx=tx), Reservation)
            raise RuntimeError("the job row could not be written")
    assert await used(ledger) == 0


async def test_reservation_in_a_transaction_is_denied_at_the_limit(
    ledger: Ledger, db: Database
) -> None:
    """Inside the caller's transaction the limit holds and the denial says which one."""
    await spend(ledger, 5)
    async with db.transaction() as tx:
        outcome = await ledger.reserve(G, ALICE, (), 1, tx=tx)
    assert isinstance(outcome, Denial) and outcome.reason == "member_limit"


async def test_concurrent_reservations_in_transactions_never_pass_the_limit(
    ledger: Ledger, db: Database
) -> None:
    """50 callers each reserving inside their own transaction together get exactly 5."""

    async def attempt() -> Reservation | Denial:
        async with db.transaction() as tx:
            return await ledger.reserve(G, ALICE, (), 1, tx=tx)

    outcomes = await asyncio.gather(*(attempt() for _ in range(50)))
    assert sum(isinstance(o, Reservation) for o in outcomes) == 5


# -- two real processes ---------------------------------------------------------------

RACE_WORKER = """
import asyncio, sys
from bot.db import open_database
from bot.ledger import Ledger, Reservation

async def main() -> None:
    url, schema = sys.argv[1], sys.argv[2] or None
    spread, attempts, limit = (int(arg) for arg in sys.argv[3:6])
    db = await open_database(url, schema=schema)
    ledger = Ledger(db, default_limit=limit, default_period="lifetime")
    await ledger.guild_settings(1)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    outcomes = await asyncio.gather(
        *(ledger.reserve(1, 1000 + i % spread, (), 1) for i in range(attempts))
    )
    print(sum(isinstance(o, Reservation) for o in outcomes), flush=True)
    await db.close()

asyncio.run(main())
"""
REPO = Path(__file__).resolve().parents[1]


async def race_in_two_processes(
    databases: Databases, *, spread: int, default_limit: int, attempts: int = 150
) -> list[int]:
    """Two worker processes reserve 1 credit ``attempts`` times each, released together."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RACE_WORKER,
            databases.url,
            databases.schema or "",
            str(spread),
            str(attempts),
            str(default_limit),
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.strip() == b"ready", line
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        outputs = [await asyncio.wait_for(proc.communicate(), 60) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0]
        return [int(out.strip()) for out, _ in outputs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_two_processes_never_pass_a_member_limit(databases: Databases) -> None:
    """Two processes racing 150 reserves each for one member with limit 30 get 30 in all."""
    db = await databases.open()
    granted = await race_in_two_processes(databases, spread=1, default_limit=30)
    assert sum(granted) == 30
    row = await db.fetchone("SELECT SUM(cost) FROM ledger_entries WHERE state = 'reserved'")
    assert row is not None and int(row[0]) == 30


async def test_two_processes_never_pass_a_server_budget(databases: Databases) -> None:
    """Two processes racing 150 reserves each over 40 members against a budget of 25 get 25."""
    db = await databases.open()
    ledger = Ledger(db, default_limit=1000, default_period="lifetime")
    await ledger.set_server_budget(1, MOD, 25)
    granted = await race_in_two_processes(databases, spread=40, default_limit=1000)
    assert sum(granted) == 25
    assert (await ledger.server_usage(1)).used == 25
