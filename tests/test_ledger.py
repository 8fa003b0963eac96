"""The credit ledger on a real SQLite file: atomic limits, settlement, periods, moderation."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.db import Database
from bot.ledger import (
    Denial,
    Ledger,
    LedgerValueError,
    Reservation,
    period_end,
    period_start,
)

G, ALICE, BOB, MOD = 1, 11, 12, 99
ROLE_A, ROLE_B = 501, 502


class Clock:
    """A settable UTC clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 15, 12, 0, tzinfo=UTC))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "nested" / "ledger.db")
    yield database
    await database.close()


@pytest.fixture
def ledger(db: Database, clock: Clock) -> Ledger:
    return Ledger(db, default_limit=5, default_period="daily", clock=clock)


async def reserve_ok(ledger: Ledger, member: int = ALICE, roles: tuple[int, ...] = ()) -> str:
    outcome = await ledger.reserve(G, member, roles, 1)
    assert isinstance(outcome, Reservation), outcome
    return outcome.id


# -- atomicity -------------------------------------------------------------------------


async def test_200_concurrent_reserves_never_pass_the_member_limit(ledger: Ledger) -> None:
    """200 simultaneous reserves for a member with 5 credits left give exactly 5."""
    outcomes = await asyncio.gather(*(ledger.reserve(G, ALICE, (), 1) for _ in range(200)))
    granted = [o for o in outcomes if isinstance(o, Reservation)]
    assert len(granted) == 5
    assert all(
        isinstance(o, Denial) and o.reason == "member_limit" for o in outcomes if o not in granted
    )
    assert (await ledger.balance(G, ALICE, ())).used == 5


async def test_200_concurrent_reserves_never_pass_the_server_budget(ledger: Ledger) -> None:
    """With a budget of 7, 200 reserves spread over 40 members give exactly 7."""
    await ledger.set_server_budget(G, MOD, 7)
    outcomes = await asyncio.gather(*(ledger.reserve(G, 1000 + i % 40, (), 1) for i in range(200)))
    granted = [o for o in outcomes if isinstance(o, Reservation)]
    assert len(granted) == 7
    denials = [o for o in outcomes if isinstance(o, Denial)]
    assert {d.reason for d in denials} == {"server_budget"}


async def test_two_ledgers_on_one_file_share_the_limit(tmp_path: Path, clock: Clock) -> None:
    """Two connections (as two processes would have) together still give exactly 5."""
    path = tmp_path / "shared.db"
    first, second = await Database.open(path), await Database.open(path)
    try:
        ledgers = [
            Ledger(d, default_limit=5, default_period="daily", clock=clock) for d in (first, second)
        ]
        outcomes = await asyncio.gather(
            *(ledgers[i % 2].reserve(G, ALICE, (), 1) for i in range(60))
        )
        assert sum(isinstance(o, Reservation) for o in outcomes) == 5
    finally:
        await first.close()
        await second.close()


# -- settlement ------------------------------------------------------------------------


async def test_refund_returns_the_credits_at_once(ledger: Ledger) -> None:
    """A refunded reservation no longer counts as used and the member can reserve again."""
    ids = [await reserve_ok(ledger) for _ in range(5)]
    assert isinstance(await ledger.reserve(G, ALICE, (), 1), Denial)
    assert await ledger.refund(ids[0], "unavailable")
    assert (await ledger.balance(G, ALICE, ())).used == 4
    await reserve_ok(ledger)


async def test_pending_counts_as_used_until_committed(ledger: Ledger) -> None:
    """Reserved credits show as used and pending; committing keeps them used, not pending."""
    rid = await reserve_ok(ledger)
    before = await ledger.balance(G, ALICE, ())
    assert (before.used, before.pending, before.remaining) == (1, 1, 4)
    assert await ledger.commit(rid)
    after = await ledger.balance(G, ALICE, ())
    assert (after.used, after.pending) == (1, 0)


async def test_commit_and_refund_are_idempotent(ledger: Ledger) -> None:
    """Settling twice changes nothing the second time; a committed credit cannot be refunded."""
    rid = await reserve_ok(ledger)
    assert await ledger.commit(rid) is True
    assert await ledger.commit(rid) is False
    assert await ledger.refund(rid, "late") is False
    assert (await ledger.balance(G, ALICE, ())).used == 1
    other = await reserve_ok(ledger)
    assert await ledger.refund(other, "x") is True
    assert await ledger.refund(other, "x") is False
    assert await ledger.commit(other) is False
    assert (await ledger.balance(G, ALICE, ())).used == 1


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
    restarted = Ledger(db, default_limit=5, default_period="daily", clock=clock)
    refunded = await restarted.refund_unsettled(exclude_job_ids={"job-b"})
    assert [r.job_id for r in refunded] == ["job-a"]
    assert (await restarted.balance(G, ALICE, ())).used == 1


# -- limits ----------------------------------------------------------------------------


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
    assert (await ledger.balance(G, ALICE, (ROLE_A,))).limit == 3


async def test_role_limit_can_be_below_the_default(ledger: Ledger) -> None:
    """A role limit replaces the default even when it is smaller."""
    await ledger.set_role_limit(G, MOD, ROLE_A, 1)
    assert (await ledger.balance(G, ALICE, (ROLE_A,))).limit == 1
    assert (await ledger.balance(G, ALICE, ())).limit == 5


async def test_cleared_limits_fall_back(ledger: Ledger) -> None:
    """Clearing an override or a role limit falls back to the next rule."""
    await ledger.set_role_limit(G, MOD, ROLE_A, 9)
    await ledger.set_member_limit(G, MOD, ALICE, 1)
    await ledger.clear_member_limit(G, MOD, ALICE)
    assert (await ledger.balance(G, ALICE, (ROLE_A,))).limit == 9
    await ledger.clear_role_limit(G, MOD, ROLE_A)
    assert (await ledger.balance(G, ALICE, (ROLE_A,))).limit == 5


async def test_grants_add_to_the_limit_for_this_period_only(ledger: Ledger, clock: Clock) -> None:
    """A grant raises this period's limit, a negative grant lowers it, both expire."""
    await ledger.grant(G, MOD, ALICE, 3)
    await ledger.grant(G, MOD, ALICE, -1)
    assert (await ledger.balance(G, ALICE, ())).limit == 7
    clock.now += timedelta(days=1)
    assert (await ledger.balance(G, ALICE, ())).limit == 5


async def test_reset_zeroes_usage_this_period(ledger: Ledger) -> None:
    """After /quota reset the member's used count is 0 and they can spend again."""
    for _ in range(5):
        await ledger.commit(await reserve_ok(ledger))
    await ledger.reset_member(G, MOD, ALICE)
    assert (await ledger.balance(G, ALICE, ())).used == 0
    await reserve_ok(ledger)


async def test_new_guild_takes_the_configured_defaults(ledger: Ledger) -> None:
    """First use in a guild creates it with DEFAULT_USER_LIMIT and LIMIT_PERIOD."""
    settings = await ledger.guild_settings(777)
    assert (settings.default_limit, settings.period, settings.server_budget) == (5, "daily", 0)


async def test_denial_says_when_the_period_resets(ledger: Ledger) -> None:
    """A member at their limit is told the reset time (next UTC midnight for daily)."""
    for _ in range(5):
        await reserve_ok(ledger)
    denial = await ledger.reserve(G, ALICE, (), 1)
    assert isinstance(denial, Denial)
    assert (denial.used, denial.limit) == (5, 5)
    assert denial.resets_at == datetime(2026, 3, 16, tzinfo=UTC)


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("set_default_limit", (-1,)),
        ("set_default_limit", (10_000_001,)),
        ("set_server_budget", (-5,)),
        ("set_period", ("hourly",)),
        ("grant", (ALICE, 0)),
        ("grant", (ALICE, 2_000_000)),
        ("set_member_limit", (ALICE, -3)),
        ("set_role_limit", (ROLE_A, -3)),
    ],
)
async def test_invalid_values_are_refused(ledger: Ledger, call: str, args: tuple) -> None:
    """Negative limits, absurd amounts and unknown periods raise LedgerValueError."""
    with pytest.raises(LedgerValueError):
        await getattr(ledger, call)(G, MOD, *args)
    assert await ledger.audit_log(G) == []


async def test_every_change_is_audited(ledger: Ledger) -> None:
    """Each moderator change writes who, what, old and new value."""
    await ledger.set_default_limit(G, MOD, 7)
    await ledger.set_default_limit(G, MOD, 9)
    await ledger.set_period(G, MOD, "weekly")
    await ledger.grant(G, MOD, ALICE, 2)
    entries = await ledger.audit_log(G)
    assert [(e.action, e.old_value, e.new_value) for e in entries] == [
        ("grant", None, "2"),
        ("period", "daily", "weekly"),
        ("default_limit", "7", "9"),
        ("default_limit", "5", "7"),
    ]
    assert all(e.actor_id == MOD for e in entries)


async def test_usage_report_counts_credits_failures_and_refunds(ledger: Ledger) -> None:
    """The report has committed upscales and credits, failed reservations and refunds."""
    await ledger.commit(await reserve_ok(ledger, ALICE))
    await ledger.commit(await reserve_ok(ledger, ALICE))
    await ledger.refund(await reserve_ok(ledger, BOB), "unavailable")
    report = await ledger.usage(G)
    by_member = {m.member_id: m for m in report.members}
    assert (by_member[ALICE].upscales, by_member[ALICE].credits) == (2, 2)
    assert (by_member[BOB].failures, by_member[BOB].refunds) == (1, 1)
    assert (report.totals.upscales, report.totals.failures) == (2, 1)


# -- periods ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "period", "start", "end"),
    [
        ("2026-01-31T23:59:59", "daily", "2026-01-31T00:00", "2026-02-01T00:00"),
        ("2026-03-01T00:00:00", "daily", "2026-03-01T00:00", "2026-03-02T00:00"),
        ("2026-11-29T10:00:00", "weekly", "2026-11-23T00:00", "2026-11-30T00:00"),  # Sunday
        ("2026-11-30T00:00:00", "weekly", "2026-11-30T00:00", "2026-12-07T00:00"),  # Monday
        ("2026-01-31T12:00:00", "monthly", "2026-01-01T00:00", "2026-02-01T00:00"),
        ("2028-02-29T12:00:00", "monthly", "2028-02-01T00:00", "2028-03-01T00:00"),  # leap
        ("2026-12-31T23:59:59", "monthly", "2026-12-01T00:00", "2027-01-01T00:00"),
        ("2026-12-31T23:59:59", "weekly", "2026-12-28T00:00", "2027-01-04T00:00"),
    ],
)
def test_period_boundaries(now: str, period: str, start: str, end: str) -> None:
    """Periods start at UTC midnight / Monday / the 1st and end where the next begins."""
    moment = datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert period_start(moment, period) == datetime.fromisoformat(start).replace(tzinfo=UTC)  # type: ignore[arg-type]
    assert period_end(moment, period) == datetime.fromisoformat(end).replace(tzinfo=UTC)  # type: ignore[arg-type]


def test_lifetime_never_resets() -> None:
    """The lifetime period has no end."""
    assert period_end(datetime(2026, 5, 5, tzinfo=UTC), "lifetime") is None


def test_period_uses_utc_whatever_the_input_zone() -> None:
    """23:30 on the 31st in UTC-5 is already the 1st in UTC: the new month has begun."""
    moment = datetime(2026, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert period_start(moment, "monthly") == datetime(2026, 2, 1, tzinfo=UTC)


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
async def test_daily_rollover_ignores_the_machine_timezone(ledger: Ledger, clock: Clock) -> None:
    """With the machine in UTC+14, usage still resets at UTC midnight, not local."""
    clock.now = datetime(2026, 3, 15, 23, 0, tzinfo=UTC)
    for _ in range(5):
        await reserve_ok(ledger)
    clock.now = datetime(2026, 3, 15, 23, 59, tzinfo=UTC)
    assert isinstance(await ledger.reserve(G, ALICE, (), 1), Denial)
    clock.now = datetime(2026, 3, 16, 0, 0, tzinfo=UTC)
    await reserve_ok(ledger)


async def test_period_change_applies_to_the_current_accounting(
    ledger: Ledger, clock: Clock
) -> None:
    """Switching to weekly counts the whole week's usage, not just today's."""
    clock.now = datetime(2026, 3, 18, 12, tzinfo=UTC)  # a Wednesday
    for _ in range(3):
        await ledger.commit(await reserve_ok(ledger))
    clock.now += timedelta(days=1)
    assert (await ledger.balance(G, ALICE, ())).used == 0
    await ledger.set_period(G, MOD, "weekly")
    assert (await ledger.balance(G, ALICE, ())).used == 3
