"""The credit ledger: who may spend how much of the owner's 1min.ai credit, per period.

A job first *reserves* its cost; the reservation is *committed* when the result has been
delivered or *refunded* when anything fails. Settlement is final and idempotent: a second
commit or refund, a refund after a commit, or a commit after a refund changes nothing
and returns False. Reserved-but-unsettled credits count as used, so a member can never go
past a limit however many requests arrive at once: each reservation is decided under the
guild's lock, from usage counters (migration 0008) that every reservation, refund and
reset keeps in step with the entries, and written in the same transaction. On SQLite the
lock is ``BEGIN IMMEDIATE`` (every writer serialised, several processes on one file
included); on PostgreSQL it is an advisory lock on the guild (and on the owner's total
budget when one is set), taken before anything is read, so every process's reservations
for a guild are serialised and each sees the ones committed before it. Concurrent
reservations of a guild in one process share one transaction, as do settlements.

Limits: a member's limit is their override if any, else the most generous of their role
limits, else the guild default; plus this period's grants (which may be negative). A
guild may also have a server budget shared by everyone (0 = none); it counts what was
actually spent, so a member's ``/quota reset`` does not raise it. The owner may cap all
guilds together (``total_budget`` per ``total_budget_period``, 0 = none), enforced in the
same transaction. Periods are in UTC: daily from 00:00, weekly from Monday 00:00, monthly
from the 1st 00:00, or lifetime. Usage and grants count when they were made inside the
current period, so changing the period re-reads the history with the new window. A
guild's settings row is created with the configured defaults (``DEFAULT_USER_LIMIT``,
``LIMIT_PERIOD``) on first use.

Every moderator change is written with its audit row in one transaction and returned as
a :class:`Change` (who changed what from what to what), for the guild's quota log.

The public surface is free of engine specifics (plain values and frozen dataclasses in
and out; ``tx`` is whatever :meth:`Database.transaction` yields). SQL here is portable
(lists of ids aside, see ``Ledger._list``): parameters whose type PostgreSQL cannot infer
are ``CAST``, sums are ``CAST`` to BIGINT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from bot.db import TS_FORMAT as TS_FORMAT
from bot.db import Database, Transaction, parse_ts, ts, utc_now
from bot.settings import PERIODS, Period

log = logging.getLogger(__name__)

MAX_CREDITS = 1_000_000  # largest limit, budget, grant or cost, in credits
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # start of the "lifetime" period
LIVE = "e.state IN ('reserved', 'committed')"


class LedgerValueError(ValueError):
    """A moderator asked for an invalid value; the message is written for them."""


def period_start(now: datetime, period: Period) -> datetime:
    """Start (inclusive) of the period containing ``now``, in UTC. ``now`` must be aware."""
    if now.tzinfo is None:
        raise ValueError("naive datetime")
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return midnight
    if period == "weekly":
        return midnight - timedelta(days=midnight.weekday())
    if period == "monthly":
        return midnight.replace(day=1)
    if period == "lifetime":
        return EPOCH
    raise ValueError(f"unknown period {period!r}")


def period_end(now: datetime, period: Period) -> datetime | None:
    """End (exclusive) of the period containing ``now``; None for lifetime."""
    start = period_start(now, period)
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    if period == "monthly":
        if start.month == 12:
            return start.replace(year=start.year + 1, month=1)
        return start.replace(month=start.month + 1)
    return None


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    guild_id: int
    member_id: int
    cost: int
    job_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a reservation was refused: which limit, how much of it is used, when it resets."""

    reason: Literal["member_limit", "server_budget", "total_budget"]
    used: int
    limit: int
    resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class Balance:
    used: int  # committed + reserved this period (since the last reset)
    pending: int  # the reserved, not yet settled, part of ``used``
    limit: int  # effective limit including this period's grants (never below 0)
    period: Period
    resets_at: datetime | None  # None for lifetime

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class GuildSettings:
    guild_id: int
    default_limit: int
    period: Period
    server_budget: int  # 0 = none
    role_limits: dict[int, int] = field(default_factory=dict)
    member_limits: dict[int, int] = field(default_factory=dict)
    log_channel_id: int | None = None  # where quota changes and budget alerts are posted


@dataclass(frozen=True, slots=True)
class MemberUsage:
    member_id: int  # 0 in a report's totals
    upscales: int  # committed reservations
    credits: int  # committed credits
    failures: int  # refunded reservations
    refunds: int  # refunded credits


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One UTC day of a guild's settled credits (for the /usage chart)."""

    day: date  # the day the reservations were made
    delivered: int  # committed credits
    refunded: int  # refunded credits


@dataclass(frozen=True, slots=True)
class UsageReport:
    period: Period
    since: datetime
    members: list[MemberUsage]  # most credits first
    totals: MemberUsage
    days: list[DayUsage] = field(default_factory=list)  # oldest first, days with use only


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor_id: int
    action: str
    target: str | None
    old_value: str | None
    new_value: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Change:
    """What a moderator change did (as audited), for the guild's quota log."""

    action: str
    target: str | None  # "role:<id>", "member:<id>", "channel", or None for the guild
    old_value: str | None
    new_value: str | None


class ServerUsage(NamedTuple):
    used: int  # live (reserved + committed) credits of the guild this period
    budget: int  # the server budget; 0 = none


@dataclass(frozen=True, slots=True)
class TotalUsage:
    """The owner's total budget across all guilds, for /quota show."""

    used: int
    limit: int
    resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Update:
    """One audited setting change: how to read the old value and write the new one."""

    action: str
    target: str | None
    read_sql: str
    read_params: tuple[object, ...]
    write_sql: str
    write_params: tuple[object, ...]
    new_value: object


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class _Batcher(Generic[K, T, R]):
    """Group commit: concurrent requests with the same key share one run.

    ``run(key, items)`` handles a whole batch (one transaction) and returns one result
    per item. While a batch runs, new items for its key queue up and form the next one.
    If a batch fails, each of its items is run alone, so one bad item fails only its own
    caller.
    """

    def __init__(self, run: Callable[[K, list[T]], Awaitable[list[R]]]) -> None:
        self._run = run
        self._queues: dict[K, list[tuple[T, asyncio.Future[R]]]] = {}
        self._flushers: dict[K, asyncio.Task[None]] = {}

    async def submit(self, key: K, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append((item, future))
        flusher = self._flushers.get(key)
        if flusher is None or flusher.done():
            self._flushers[key] = asyncio.create_task(self._flush(key), name="ledger-batch")
        return await future

    async def _flush(self, key: K) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._queues.get(key):
                batch = self._queues.pop(key)
                try:
                    results = await self._run(key, [item for item, _ in batch])
                except Exception:
                    for item, future in batch:
                        try:
                            (result,) = await self._run(key, [item])
                        except Exception as exc:
                            if not future.done():
                                future.set_exception(exc)
                        else:
                            if not future.done():
                                future.set_result(result)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                batch = []
        finally:
            # Only reached with work left if this task was cancelled: nobody must wait
            # forever for a batch that will not run.
            for _, future in [*batch, *self._queues.pop(key, [])]:
                if not future.done():
                    future.cancel()


def guild_lock(guild_id: int) -> str:
    """The lock key that serialises a guild's reservations (``Transaction.lock``).

    Callers that must decide something together with a reservation (the job queue's
    per-member cap) take it first, in the reservation's transaction.
    """
    return f"guild:{guild_id}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_limit(value: int, what: str = "Limits") -> int:
    if not _is_int(value) or not 0 <= value <= MAX_CREDITS:
        raise LedgerValueError(f"{what} must be between 0 and {MAX_CREDITS:,} credits.")
    return value


def _check_period(period: str) -> Period:
    for known in PERIODS:
        if period == known:
            return known
    raise LedgerValueError("The period must be daily, weekly, monthly or lifetime.")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


# -- SQL fragments ---------------------------------------------------------------------
# The guild's row with the start of its current period as ``gs.since``: the four possible
# starts are computed in Python (portable) and the guild's period picks one, so the check
# always uses the period stored in the database, even if another process just changed it.
_GUILD = (
    "(SELECT guild_id, period, default_limit, server_budget,"
    " CASE period WHEN 'daily' THEN :p_daily WHEN 'weekly' THEN :p_weekly"
    " WHEN 'monthly' THEN :p_monthly ELSE :p_lifetime END AS since"
    " FROM guild_settings WHERE guild_id = :g) gs"
)
_TOTAL_USED = (
    "SELECT CAST(COALESCE(SUM(e.cost), 0) AS BIGINT) FROM ledger_entries e"
    f" WHERE {LIVE} AND e.created_at >= CAST(:t_since AS TEXT)"
)
_GRANTS = (
    "(SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM grants"
    " WHERE guild_id = :g AND member_id = :m AND created_at >= gs.since)"
)
# Recomputing a usage counter (see migration 0008): what it counts, from the entries.
_MEMBER_RECOUNT = (
    "SELECT e.member_id, CAST(SUM(e.cost) AS BIGINT) AS used FROM ledger_entries e"
    f" WHERE e.guild_id = :g AND e.member_id IN {{members}} AND {LIVE}"
    " AND e.reset_at IS NULL AND e.created_at >= :since GROUP BY e.member_id"
)
_GUILD_RECOUNT = (
    "SELECT CAST(COALESCE(SUM(e.cost), 0) AS BIGINT) FROM ledger_entries e"
    f" WHERE e.guild_id = :g AND {LIVE} AND e.created_at >= :since"
)
# Per member of a list: the usage counter, the override and this period's grants.
_MEMBERS = (
    "SELECT m.id AS member_id, u.since, u.used, ml.credit_limit AS override,"
    " (SELECT CAST(COALESCE(SUM(gr.amount), 0) AS BIGINT) FROM grants gr"
    "  WHERE gr.guild_id = :g AND gr.member_id = m.id AND gr.created_at >= :since) AS grants"
    " FROM {members} m"
    " LEFT JOIN member_usage u ON u.guild_id = :g AND u.member_id = m.id"
    " LEFT JOIN member_limits ml ON ml.guild_id = :g AND ml.member_id = m.id"
)
_SAVE_MEMBER_USAGE = (
    "INSERT INTO member_usage (guild_id, member_id, since, used) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (guild_id, member_id)"
    " DO UPDATE SET since = excluded.since, used = excluded.used"
)
_SAVE_GUILD_USAGE = (
    "INSERT INTO guild_usage (guild_id, since, used) VALUES (?, ?, ?)"
    " ON CONFLICT (guild_id) DO UPDATE SET since = excluded.since, used = excluded.used"
)


def _period_params(now: datetime) -> dict[str, str]:
    return {f"p_{period}": ts(period_start(now, period)) for period in PERIODS}


def _effective_limit(
    default_limit: int,
    override: int | None,
    role_limits: Mapping[int, int],
    role_ids: Collection[int],
    grants: int,
) -> int:
    """A member's limit: their override, else their most generous limited role, else the
    guild default; plus this period's grants (so it may be negative)."""
    if override is None:
        held = [role_limits[r] for r in role_ids if r in role_limits]
        override = max(held) if held else default_limit
    return override + grants


@dataclass(frozen=True, slots=True)
class _Ask:
    """One reservation waiting for its guild's lock."""

    member_id: int
    role_ids: tuple[int, ...]
    cost: int
    job_id: str | None


@dataclass(frozen=True, slots=True)
class _Guild:
    """A guild's settings and live usage for the current period, read in a transaction."""

    period: Period
    since: str
    default_limit: int
    server_budget: int
    used: int
    stale: bool  # the guild_usage row was not for this period: recomputed


@dataclass(frozen=True, slots=True)
class _Member:
    used: int
    override: int | None
    grants: int
    stale: bool  # the member_usage row was not for this period: recomputed


class Ledger:
    """Reservations, settlement, limits and reports for every guild."""

    def __init__(
        self,
        db: Database,
        *,
        default_limit: int,
        default_period: Period,
        total_budget: int = 0,
        total_budget_period: Period = "monthly",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._db = db
        self._default_limit = _check_limit(default_limit)
        self._default_period = _check_period(default_period)
        self._total_budget = _check_limit(total_budget, "The total budget")
        self._total_period = _check_period(total_budget_period)
        self._clock = clock
        # Guilds whose settings row exists. Rows are never deleted, so this cannot go stale.
        self._known_guilds: set[int] = set()
        # Group commit: concurrent reservations per guild, settlements per outcome.
        self._reserves: _Batcher[int, _Ask, Reservation | Denial] = _Batcher(self._reserve_batch)
        self._settles: _Batcher[tuple[str, str | None], str, bool] = _Batcher(self._settle_batch)

    # -- guild settings ----------------------------------------------------------------

    async def _ensure_guild(self, guild_id: int, tx: Transaction | None = None) -> None:
        """Create the guild's settings row with the configured defaults if it is missing."""
        if guild_id in self._known_guilds:
            return
        sql = (
            "INSERT INTO guild_settings (guild_id, default_limit, period, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (guild_id) DO NOTHING"
        )
        params = (guild_id, self._default_limit, self._default_period, ts(self._clock()))
        if tx is not None:
            await tx.execute(sql, params)  # the caller's transaction may still roll back
        else:
            await self._db.write(sql, params)
            self._known_guilds.add(guild_id)

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's limits (created with the configured defaults on first use)."""
        await self._ensure_guild(guild_id)
        row = await self._db.fetchone(
            "SELECT default_limit, period, server_budget, log_channel_id FROM guild_settings"
            " WHERE guild_id = ?",
            (guild_id,),
        )
        assert row is not None
        roles = await self._db.fetchall(
            "SELECT role_id, credit_limit FROM role_limits WHERE guild_id = ?", (guild_id,)
        )
        members = await self._db.fetchall(
            "SELECT member_id, credit_limit FROM member_limits WHERE guild_id = ?", (guild_id,)
        )
        return GuildSettings(
            guild_id=guild_id,
            default_limit=row["default_limit"],
            period=row["period"],
            server_budget=row["server_budget"],
            role_limits={r["role_id"]: r["credit_limit"] for r in roles},
            member_limits={m["member_id"]: m["credit_limit"] for m in members},
            log_channel_id=row["log_channel_id"],
        )

    # -- reservations ------------------------------------------------------------------
    # A reservation is decided under the guild's lock (and the total budget's, when there
    # is one) from the usage counters of migration 0008: two rows read, a few rows
    # written, whatever the size of the history. Concurrent reservations of a guild in
    # this process share one transaction (group commit); every process's transactions for
    # the guild are serialised by the lock (PostgreSQL) or by ``BEGIN IMMEDIATE``
    # (SQLite), and each reads what the ones before it committed.

    def _lock_keys(self, guild_id: int) -> tuple[str, ...]:
        """Advisory lock keys serialising the writers of a guild's usage (PostgreSQL)."""
        if self._total_budget:
            return (guild_lock(guild_id), "total")
        return (guild_lock(guild_id),)

    def _list(self, values: Collection[Any], of: Literal["BIGINT", "TEXT"]) -> tuple[str, Any]:
        """A list of values for SQL: a table of one column ``id`` to put in FROM or an IN
        subquery, and the value of its ``:ids`` parameter (an array on PostgreSQL, JSON on
        SQLite: one statement whatever the length)."""
        if self._db.engine == "postgresql":
            return f"(SELECT unnest(CAST(:ids AS {of}[])) AS id)", list(values)
        return "(SELECT value AS id FROM json_each(:ids))", json.dumps(list(values))

    async def reserve(
        self,
        guild_id: int,
        member_id: int,
        role_ids: Collection[int],
        cost: int,
        *,
        job_id: str | None = None,
        tx: Transaction | None = None,
    ) -> Reservation | Denial:
        """Reserve ``cost`` credits atomically, or say which limit stops it.

        ``role_ids`` are the member's current roles (for role limits); ``job_id`` lets
        :meth:`refund_unsettled` leave the reservation to the job recovery. Pass ``tx``
        to reserve inside the caller's transaction (the job row and the reservation then
        commit together; on PostgreSQL the guild's lock is held until that transaction
        ends, so keep it short). Raises ValueError for a cost that is not a positive
        whole number up to MAX_CREDITS.
        """
        if not _is_int(cost) or not 0 < cost <= MAX_CREDITS:
            raise ValueError(f"cost must be a whole number from 1 to {MAX_CREDITS}")
        ask = _Ask(member_id, tuple(dict.fromkeys(int(r) for r in role_ids)), cost, job_id)
        if tx is not None:
            await self._ensure_guild(guild_id, tx)
            await tx.lock(*self._lock_keys(guild_id))
            (outcome,) = await self._reserve_locked(tx, guild_id, [ask])
            return outcome
        await self._ensure_guild(guild_id)
        return await self._reserves.submit(guild_id, ask)

    async def _reserve_batch(self, guild_id: int, asks: list[_Ask]) -> list[Reservation | Denial]:
        async with self._db.transaction() as tx:
            await tx.lock(*self._lock_keys(guild_id))
            return await self._reserve_locked(tx, guild_id, asks)

    async def _reserve_locked(
        self, tx: Transaction, guild_id: int, asks: list[_Ask]
    ) -> list[Reservation | Denial]:
        """Decide ``asks`` in order and record the granted ones. The caller holds the locks."""
        now = self._clock()
        guild = await self._guild(tx, guild_id, now)
        members = await self._members(tx, guild_id, guild.since, [a.member_id for a in asks])
        role_limits = await self._role_limits(tx, guild_id, [r for a in asks for r in a.role_ids])
        total_used = 0
        if self._total_budget:
            total_since = ts(period_start(now, self._total_period))
            total_used = int(await self._scalar(tx, _TOTAL_USED, {"t_since": total_since}))
        resets_at = period_end(now, guild.period)
        used = {m: state.used for m, state in members.items()}
        server_used = guild.used
        outcomes: list[Reservation | Denial] = []
        for ask in asks:
            member = members[ask.member_id]
            limit = _effective_limit(
                guild.default_limit, member.override, role_limits, ask.role_ids, member.grants
            )
            mine = used[ask.member_id]
            if mine + ask.cost > limit:
                outcomes.append(Denial("member_limit", mine, max(0, limit), resets_at))
            elif guild.server_budget and server_used + ask.cost > guild.server_budget:
                outcomes.append(
                    Denial("server_budget", server_used, guild.server_budget, resets_at)
                )
            elif self._total_budget and total_used + ask.cost > self._total_budget:
                total_resets = period_end(now, self._total_period)
                outcomes.append(
                    Denial("total_budget", total_used, self._total_budget, total_resets)
                )
            else:
                used[ask.member_id] += ask.cost
                server_used += ask.cost
                total_used += ask.cost
                outcomes.append(
                    Reservation(
                        uuid.uuid4().hex, guild_id, ask.member_id, ask.cost, ask.job_id, now
                    )
                )
        granted = [o for o in outcomes if isinstance(o, Reservation)]
        if granted:
            await tx.executemany(
                "INSERT INTO ledger_entries"
                " (id, guild_id, member_id, cost, state, job_id, created_at)"
                " VALUES (?, ?, ?, ?, 'reserved', ?, ?)",
                [(r.id, guild_id, r.member_id, r.cost, r.job_id, ts(now)) for r in granted],
            )
        changed = sorted(m for m, s in members.items() if s.stale or used[m] != s.used)
        if changed:
            await tx.executemany(
                _SAVE_MEMBER_USAGE, [(guild_id, m, guild.since, used[m]) for m in changed]
            )
        if guild.stale or server_used != guild.used:
            await tx.execute(_SAVE_GUILD_USAGE, (guild_id, guild.since, server_used))
        return outcomes

    async def _guild(self, q: Transaction | Database, guild_id: int, now: datetime) -> _Guild:
        """The guild's settings and live credits this period (its counter, or a recount)."""
        row = await q.fetchone(
            "SELECT gs.period, gs.default_limit, gs.server_budget, gu.since, gu.used"
            " FROM guild_settings gs LEFT JOIN guild_usage gu ON gu.guild_id = gs.guild_id"
            " WHERE gs.guild_id = ?",
            (guild_id,),
        )
        assert row is not None, "the guild's settings row exists (callers ensure it)"
        period: Period = row["period"]
        since = ts(period_start(now, period))
        stale = row["since"] != since
        used = (
            int(await self._scalar(q, _GUILD_RECOUNT, {"g": guild_id, "since": since}))
            if stale
            else int(row["used"])
        )
        return _Guild(
            period, since, int(row["default_limit"]), int(row["server_budget"]), used, stale
        )

    async def _members(
        self, q: Transaction | Database, guild_id: int, since: str, member_ids: Collection[int]
    ) -> dict[int, _Member]:
        """Each member's live credits this period (counter or recount), override, grants."""
        table, ids = self._list(sorted(set(member_ids)), "BIGINT")
        rows = await q.fetchall(
            _MEMBERS.format(members=table), {"g": guild_id, "since": since, "ids": ids}
        )
        stale = sorted(int(r["member_id"]) for r in rows if r["since"] != since)
        used = {int(r["member_id"]): int(r["used"] or 0) for r in rows}
        if stale:
            used.update(dict.fromkeys(stale, 0))  # members with no live entry recount to 0
            table, ids = self._list(stale, "BIGINT")
            recount = _MEMBER_RECOUNT.format(members=f"(SELECT id FROM {table} s)")
            for r in await q.fetchall(recount, {"g": guild_id, "since": since, "ids": ids}):
                used[int(r["member_id"])] = int(r["used"])
        return {
            int(r["member_id"]): _Member(
                used=used[int(r["member_id"])],
                override=None if r["override"] is None else int(r["override"]),
                grants=int(r["grants"]),
                stale=r["since"] != since,
            )
            for r in rows
        }

    async def _role_limits(
        self, q: Transaction | Database, guild_id: int, role_ids: Collection[int]
    ) -> dict[int, int]:
        if not role_ids:
            return {}
        table, ids = self._list(sorted(set(role_ids)), "BIGINT")
        rows = await q.fetchall(
            f"SELECT rl.role_id, rl.credit_limit FROM role_limits rl JOIN {table} r"
            " ON r.id = rl.role_id WHERE rl.guild_id = :g",
            {"g": guild_id, "ids": ids},
        )
        return {int(r["role_id"]): int(r["credit_limit"]) for r in rows}

    async def _settle(
        self,
        reservation_id: str,
        state: str,
        reason: str | None,
        tx: Transaction | None,
    ) -> bool:
        if tx is not None:
            return (await self._settle_in(tx, state, reason, [reservation_id]))[0]
        return await self._settles.submit((state, reason), reservation_id)

    async def _settle_batch(self, outcome: tuple[str, str | None], ids: list[str]) -> list[bool]:
        """Settle many reservations the same way in one transaction."""
        state, reason = outcome
        async with self._db.transaction() as tx:
            return await self._settle_in(tx, state, reason, ids)

    async def _settle_in(
        self, tx: Transaction, state: str, reason: str | None, ids: list[str]
    ) -> list[bool]:
        """Commit or refund ``ids`` (those still reserved) in ``tx``, in one statement.

        A refund gives the credits back to the usage counters that counted them, under
        the guilds' locks; a commit changes no total (reserved credits already count).
        """
        table, listed = self._list(ids, "TEXT")
        if state == "refunded":
            guilds = await tx.fetchall(
                "SELECT DISTINCT guild_id FROM ledger_entries"
                f" WHERE id IN (SELECT id FROM {table} s)",
                {"ids": listed},
            )
            await tx.lock(*(guild_lock(int(r["guild_id"])) for r in guilds))
        rows = await tx.fetchall(
            "UPDATE ledger_entries SET state = :state, reason = :reason, settled_at = :now"
            f" WHERE id IN (SELECT id FROM {table} s) AND state = 'reserved'"
            " RETURNING id, guild_id, member_id, cost, created_at, reset_at",
            {"state": state, "reason": reason, "now": ts(self._clock()), "ids": listed},
        )
        if state == "refunded" and rows:
            await tx.executemany(
                "UPDATE guild_usage SET used = used - ? WHERE guild_id = ? AND since <= ?",
                [(r["cost"], r["guild_id"], r["created_at"]) for r in rows],
            )
            await tx.executemany(
                "UPDATE member_usage SET used = used - ?"
                " WHERE guild_id = ? AND member_id = ? AND since <= ?",
                [
                    (r["cost"], r["guild_id"], r["member_id"], r["created_at"])
                    for r in rows
                    if r["reset_at"] is None
                ],
            )
        changed = {r["id"] for r in rows}
        results: list[bool] = []
        for reservation_id in ids:  # the same id twice in a batch: only the first changed it
            results.append(reservation_id in changed)
            changed.discard(reservation_id)
        return results

    async def commit(self, reservation_id: str, *, tx: Transaction | None = None) -> bool:
        """Charge a reservation. Idempotent; True only when this call changed it.

        A refunded reservation stays refunded (commit after refund returns False). Pass
        ``tx`` to settle inside the caller's transaction (e.g. with the job's status).
        """
        return await self._settle(reservation_id, "committed", None, tx)

    async def refund(
        self, reservation_id: str, reason: str, *, tx: Transaction | None = None
    ) -> bool:
        """Return a reservation's credits at once. Idempotent; True only when this call
        changed it. A committed reservation stays charged (refund after commit returns
        False): a delivered result is paid for. ``reason`` is kept for the records.
        """
        return await self._settle(reservation_id, "refunded", reason, tx)

    async def reservation(self, reservation_id: str) -> tuple[int, str] | None:
        """A reservation's cost and state (reserved, committed or refunded), or None."""
        row = await self._db.fetchone(
            "SELECT cost, state FROM ledger_entries WHERE id = ?", (reservation_id,)
        )
        return None if row is None else (int(row["cost"]), str(row["state"]))

    async def refund_unsettled(self, *, exclude_job_ids: Collection[str] = ()) -> list[Reservation]:
        """Refund reservations a crash left unsettled (except those of ``exclude_job_ids``).

        Meant for start-up, before new work is accepted. Returns what was refunded.
        """
        rows = await self._db.fetchall(
            "SELECT id, guild_id, member_id, cost, job_id, created_at FROM ledger_entries"
            " WHERE state = 'reserved' ORDER BY created_at, id"
        )
        excluded = set(exclude_job_ids)
        refunded: list[Reservation] = []
        for row in rows:
            if row["job_id"] is not None and row["job_id"] in excluded:
                continue
            if await self.refund(row["id"], "restart"):
                refunded.append(
                    Reservation(
                        id=row["id"],
                        guild_id=row["guild_id"],
                        member_id=row["member_id"],
                        cost=row["cost"],
                        job_id=row["job_id"],
                        created_at=parse_ts(row["created_at"]),
                    )
                )
        if refunded:
            log.info("Refunded %d reservations left unsettled", len(refunded))
        return refunded

    # -- queries -----------------------------------------------------------------------

    async def balance(self, guild_id: int, member_id: int, role_ids: Collection[int]) -> Balance:
        """Used, pending and limit for this period, and when it resets (for /credits)."""
        await self._ensure_guild(guild_id)
        now = self._clock()
        guild = await self._guild(self._db, guild_id, now)
        member = (await self._members(self._db, guild_id, guild.since, [member_id]))[member_id]
        role_limits = await self._role_limits(self._db, guild_id, role_ids)
        pending = await self._scalar(
            self._db,
            "SELECT CAST(COALESCE(SUM(cost), 0) AS BIGINT) FROM ledger_entries"
            " WHERE guild_id = :g AND member_id = :m AND state = 'reserved'"
            " AND reset_at IS NULL AND created_at >= :since",
            {"g": guild_id, "m": member_id, "since": guild.since},
        )
        limit = _effective_limit(
            guild.default_limit, member.override, role_limits, role_ids, member.grants
        )
        return Balance(
            used=member.used,
            pending=int(pending),
            limit=max(0, limit),
            period=guild.period,
            resets_at=period_end(now, guild.period),
        )

    async def server_usage(self, guild_id: int) -> ServerUsage:
        """The guild's live credits this period and its server budget (budget alerts)."""
        await self._ensure_guild(guild_id)
        guild = await self._guild(self._db, guild_id, self._clock())
        return ServerUsage(guild.used, guild.server_budget)

    async def total_usage(self) -> TotalUsage | None:
        """Credits all guilds used this total-budget period; None when there is no cap."""
        if not self._total_budget:
            return None
        now = self._clock()
        since = ts(period_start(now, self._total_period))
        used = await self._scalar(self._db, _TOTAL_USED, {"t_since": since})
        return TotalUsage(int(used), self._total_budget, period_end(now, self._total_period))

    async def claim_budget_alert(self, guild_id: int, threshold_percent: int) -> bool:
        """True exactly once per guild, period and threshold: the caller posts the alert.

        Several processes may see a threshold crossed at once; only one claim succeeds.
        """
        if not _is_int(threshold_percent) or not 0 < threshold_percent <= 1000:
            raise ValueError("threshold_percent must be a whole number from 1 to 1000")
        await self._ensure_guild(guild_id)
        claimed = await self._db.write(
            "INSERT INTO budget_alerts (guild_id, period_start, threshold, created_at)"
            " SELECT CAST(:g AS BIGINT), gs.since, CAST(:threshold AS BIGINT),"
            f" CAST(:now AS TEXT) FROM {_GUILD} WHERE 1 = 1"  # WHERE: SQLite upsert syntax
            " ON CONFLICT (guild_id, period_start, threshold) DO NOTHING",
            {
                "g": guild_id,
                "threshold": threshold_percent,
                "now": ts(self._clock()),
                **_period_params(self._clock()),
            },
        )
        return claimed == 1

    async def usage(self, guild_id: int, period: Period | None = None) -> UsageReport:
        """Per-member upscales, credits, failures and refunds since the period began.

        ``period`` defaults to the guild's own; an unknown one raises LedgerValueError.
        Resets do not hide anything here: the report is what was spent.
        """
        chosen: Period = (
            _check_period(period) if period else (await self.guild_settings(guild_id)).period
        )
        since = period_start(self._clock(), chosen)
        rows = await self._db.fetchall(
            "SELECT member_id,"
            " CAST(SUM(CASE WHEN state = 'committed' THEN 1 ELSE 0 END) AS BIGINT) AS upscales,"
            " CAST(SUM(CASE WHEN state = 'committed' THEN cost ELSE 0 END) AS BIGINT) AS credits,"
            " CAST(SUM(CASE WHEN state = 'refunded' THEN 1 ELSE 0 END) AS BIGINT) AS failures,"
            " CAST(SUM(CASE WHEN state = 'refunded' THEN cost ELSE 0 END) AS BIGINT) AS refunds"
            " FROM ledger_entries WHERE guild_id = ? AND created_at >= ?"
            " GROUP BY member_id ORDER BY credits DESC, member_id",
            (guild_id, ts(since)),
        )
        members = [
            MemberUsage(r["member_id"], r["upscales"], r["credits"], r["failures"], r["refunds"])
            for r in rows
            if r["upscales"] or r["failures"]  # only pending reservations: nothing to report
        ]
        totals = MemberUsage(
            0,
            sum(m.upscales for m in members),
            sum(m.credits for m in members),
            sum(m.failures for m in members),
            sum(m.refunds for m in members),
        )
        return UsageReport(chosen, since, members, totals)

    async def audit_log(self, guild_id: int, limit: int = 50) -> list[AuditEntry]:
        """The guild's most recent moderator changes, newest first."""
        rows = await self._db.fetchall(
            "SELECT actor_id, action, target, old_value, new_value, created_at FROM audit_log"
            " WHERE guild_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, limit),
        )
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

    # -- moderator changes -------------------------------------------------------------
    # Each change and its audit row are written in one transaction.

    async def _audit(self, tx: Transaction, guild_id: int, actor_id: int, change: Change) -> Change:
        await tx.execute(
            "INSERT INTO audit_log (guild_id, actor_id, action, target, old_value,"
            " new_value, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                guild_id,
                actor_id,
                change.action,
                change.target,
                change.old_value,
                change.new_value,
                ts(self._clock()),
            ),
        )
        log.info(
            "Guild %d: %s %s %s -> %s by %d",
            *(guild_id, change.action, change.target or ""),
            *(change.old_value, change.new_value, actor_id),
        )
        return change

    @staticmethod
    async def _scalar(tx: Transaction | Database, sql: str, params: Any) -> Any:
        row = await tx.fetchone(sql, params)
        return None if row is None else row[0]

    async def _change(self, guild_id: int, actor_id: int, update: _Update) -> Change:
        """Read the old value, write the new one and the audit row, in one transaction."""
        async with self._db.transaction() as tx:
            await self._ensure_guild(guild_id, tx)
            old = await self._scalar(tx, update.read_sql, update.read_params)
            await tx.execute(update.write_sql, update.write_params)
            change = Change(update.action, update.target, _text(old), _text(update.new_value))
            return await self._audit(tx, guild_id, actor_id, change)

    async def set_default_limit(self, guild_id: int, actor_id: int, limit: int) -> Change:
        """Limit for members without an override or a limited role."""
        _check_limit(limit)
        return await self._change(
            guild_id,
            actor_id,
            _Update(
                action="default_limit",
                target=None,
                read_sql="SELECT default_limit FROM guild_settings WHERE guild_id = ?",
                read_params=(guild_id,),
                write_sql="UPDATE guild_settings SET default_limit = ? WHERE guild_id = ?",
                write_params=(limit, guild_id),
                new_value=limit,
            ),
        )

    async def set_server_budget(self, guild_id: int, actor_id: int, limit: int) -> Change:
        """Total credits the whole guild may spend per period (0 = no server budget)."""
        _check_limit(limit, "The server budget")
        return await self._change(
            guild_id,
            actor_id,
            _Update(
                action="server_budget",
                target=None,
                read_sql="SELECT server_budget FROM guild_settings WHERE guild_id = ?",
                read_params=(guild_id,),
                write_sql="UPDATE guild_settings SET server_budget = ? WHERE guild_id = ?",
                write_params=(limit, guild_id),
                new_value=limit,
            ),
        )

    async def set_period(self, guild_id: int, actor_id: int, period: str) -> Change:
        """The accounting period: daily, weekly, monthly or lifetime."""
        chosen = _check_period(period)
        return await self._change(
            guild_id,
            actor_id,
            _Update(
                action="period",
                target=None,
                read_sql="SELECT period FROM guild_settings WHERE guild_id = ?",
                read_params=(guild_id,),
                write_sql="UPDATE guild_settings SET period = ? WHERE guild_id = ?",
                write_params=(chosen, guild_id),
                new_value=chosen,
            ),
        )

    async def set_log_channel(self, guild_id: int, actor_id: int, channel_id: int | None) -> Change:
        """Where quota changes and budget alerts are posted (None stops posting)."""
        if channel_id is not None and (not _is_int(channel_id) or channel_id <= 0):
            raise LedgerValueError("The log channel must be a channel.")
        return await self._change(
            guild_id,
            actor_id,
            _Update(
                action="log_channel",
                target=None,
                read_sql="SELECT log_channel_id FROM guild_settings WHERE guild_id = ?",
                read_params=(guild_id,),
                write_sql="UPDATE guild_settings SET log_channel_id = ? WHERE guild_id = ?",
                write_params=(channel_id, guild_id),
                new_value=channel_id,
            ),
        )

    async def set_role_limit(
        self, guild_id: int, actor_id: int, role_id: int, limit: int
    ) -> Change:
        """Limit for members holding the role (a member gets their most generous role)."""
        _check_limit(limit)
        return await self._change(
            guild_id,
            actor_id,
            _Update(
                action="role_limit",
                target=f"role:{role_id}",
                read_sql="SELECT credit_limit FROM role_limits WHERE guild_id = ? AND role_id = ?",
                read_params=(guild_id, role_id),
                write_sql=(
                    "INSERT INTO role_limits (guild_id, role_id, credit_limit) VALUES (?, ?, ?)"
                    " ON CONFLICT (guild_id, role_id)"
                    " DO UPDATE SET credit_limit = excluded.credit_limit"
                ),
                write_params=(guild_id, role_id, limit),
                new_value=limit,
            ),
        )

    async def clear_role_limit(self, guild_id: int, actor_id: int, role_id: int) -> Change:
        return await self._change(
            guild_id,
            actor_id,
            _Update(
                action="clear_role_limit",
                target=f"role:{role_id}",
                read_sql="SELECT credit_limit FROM role_limits WHERE guild_id = ? AND role_id = ?",
                read_params=(guild_id, role_id),
                write_sql="DELETE FROM role_limits WHERE guild_id = ? AND role_id = ?",
                write_params=(guild_id, role_id),
                new_value=None,
            ),
        )

    async def set_member_limit(
        self, guild_id: int, actor_id: int, member_id: int, limit: int
    ) -> Change:
        """A per-member override: beats role limits and the default."""
        _check_limit(limit)
        return await self._change(
            guild_id,
            actor_id,
            _Update(
                action="member_limit",
                target=f"member:{member_id}",
                read_sql=(
                    "SELECT credit_limit FROM member_limits WHERE guild_id = ? AND member_id = ?"
                ),
                read_params=(guild_id, member_id),
                write_sql=(
                    "INSERT INTO member_limits (guild_id, member_id, credit_limit)"
                    " VALUES (?, ?, ?) ON CONFLICT (guild_id, member_id)"
                    " DO UPDATE SET credit_limit = excluded.credit_limit"
                ),
                write_params=(guild_id, member_id, limit),
                new_value=limit,
            ),
        )

    async def clear_member_limit(self, guild_id: int, actor_id: int, member_id: int) -> Change:
        return await self._change(
            guild_id,
            actor_id,
            _Update(
                action="clear_member_limit",
                target=f"member:{member_id}",
                read_sql=(
                    "SELECT credit_limit FROM member_limits WHERE guild_id = ? AND member_id = ?"
                ),
                read_params=(guild_id, member_id),
                write_sql="DELETE FROM member_limits WHERE guild_id = ? AND member_id = ?",
                write_params=(guild_id, member_id),
                new_value=None,
            ),
        )

    async def grant(self, guild_id: int, actor_id: int, member_id: int, amount: int) -> Change:
        """One-off extra credits (negative takes away) for the current period.

        The audit row's old and new values are the member's grant total for the period.
        """
        if not _is_int(amount) or amount == 0 or abs(amount) > MAX_CREDITS:
            raise LedgerValueError(
                f"A grant must be a non-zero number of credits between -{MAX_CREDITS:,}"
                f" and {MAX_CREDITS:,}."
            )
        now = self._clock()
        params = {"g": guild_id, "m": member_id, **_period_params(now)}
        async with self._db.transaction() as tx:
            await self._ensure_guild(guild_id, tx)
            before = int(await self._scalar(tx, f"SELECT {_GRANTS} FROM {_GUILD}", params))
            await tx.execute(
                "INSERT INTO grants"
                " (guild_id, member_id, amount, period_start, actor_id, created_at)"
                " SELECT CAST(:g AS BIGINT), CAST(:m AS BIGINT), CAST(:amount AS BIGINT),"
                f" gs.since, CAST(:actor AS BIGINT), CAST(:now AS TEXT) FROM {_GUILD}",
                {**params, "amount": amount, "actor": actor_id, "now": ts(now)},
            )
            change = Change("grant", f"member:{member_id}", str(before), str(before + amount))
            return await self._audit(tx, guild_id, actor_id, change)

    async def reset_member(self, guild_id: int, actor_id: int, member_id: int) -> Change:
        """Zero a member's usage for this period.

        Nothing is deleted: the period's entries are marked as reset, so they stop
        counting towards the member's limit but stay in reports and the server budget.
        A reservation still pending is marked too (settling it later changes nothing).
        """
        now = self._clock()
        async with self._db.transaction() as tx:
            await self._ensure_guild(guild_id, tx)
            await tx.lock(guild_lock(guild_id))  # the member's usage counter changes
            guild = await self._guild(tx, guild_id, now)
            members = await self._members(tx, guild_id, guild.since, [member_id])
            await tx.execute(
                "UPDATE ledger_entries SET reset_at = :now"
                " WHERE guild_id = :g AND member_id = :m AND reset_at IS NULL"
                " AND created_at >= :since",
                {"g": guild_id, "m": member_id, "since": guild.since, "now": ts(now)},
            )
            await tx.execute(_SAVE_MEMBER_USAGE, (guild_id, member_id, guild.since, 0))
            change = Change("reset_usage", f"member:{member_id}", str(members[member_id].used), "0")
            return await self._audit(tx, guild_id, actor_id, change)
