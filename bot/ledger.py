"""The credit ledger: who may spend how much of the owner's 1min.ai credit, per period.

A job first *reserves* its cost; the reservation is *committed* when the result has been
delivered or *refunded* when anything fails. Settlement is final and idempotent: a second
commit or refund, a refund after a commit, or a commit after a refund changes nothing
and returns False. Reserved-but-unsettled credits count as used, so a member can never go
past a limit however many requests arrive at once: the check and the write are one
``INSERT ... SELECT ... WHERE used + cost <= limit`` statement. On SQLite it runs inside
a ``BEGIN IMMEDIATE`` transaction (every writer serialised, several processes on one file
included; concurrent reserves share one transaction). On PostgreSQL, READ COMMITTED
would let two such checks pass at once, so the statement runs in a transaction that
first takes advisory locks on the guild (and on the owner's total budget when one is
set): every process's reservations for a guild are serialised, and each sees the ones
committed before it.

Limits: a member's limit is their override if any, else the most generous of their role
limits, else the guild default; plus this period's grants (which may be negative). A
guild may also have a server budget shared by everyone (0 = none); it counts what was
actually spent, so a member's ``/quota reset`` does not raise it. The owner may cap all
guilds together (``total_budget`` per ``total_budget_period``, 0 = none), enforced in the
same statement. Periods are in UTC: daily from 00:00, weekly from Monday 00:00, monthly
from the 1st 00:00, or lifetime. Usage and grants count when they were made inside the
current period, so changing the period re-reads the history with the new window. A
guild's settings row is created with the configured defaults (``DEFAULT_USER_LIMIT``,
``LIMIT_PERIOD``) on first use.

Every moderator change is written with its audit row in one transaction and returned as
a :class:`Change` (who changed what from what to what), for the guild's quota log.

The public surface is free of engine specifics (plain values and frozen dataclasses in
and out; ``tx`` is whatever :meth:`Database.transaction` yields). SQL here is portable:
parameters whose type PostgreSQL cannot infer are ``CAST``, sums are ``CAST`` to BIGINT.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from bot.db import TS_FORMAT as TS_FORMAT
from bot.db import Database, Transaction, parse_ts, ts, utc_now
from bot.settings import PERIODS, Period

log = logging.getLogger(__name__)

MAX_CREDITS = 1_000_000  # largest limit, budget, grant or cost, in credits
RESERVE_ATTEMPTS = 3  # a reserve refused while no limit binds (a refund raced it) retries
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
class UsageReport:
    period: Period
    since: datetime
    members: list[MemberUsage]  # most credits first
    totals: MemberUsage


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
    """Group commit for PostgreSQL: concurrent requests with the same key share one run.

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
_MEMBER_USED = (
    "(SELECT CAST(COALESCE(SUM(e.cost), 0) AS BIGINT) FROM ledger_entries e"
    f" WHERE e.guild_id = :g AND e.member_id = :m AND {LIVE}"
    " AND e.reset_at IS NULL AND e.created_at >= gs.since)"
)
_MEMBER_PENDING = (
    "(SELECT CAST(COALESCE(SUM(e.cost), 0) AS BIGINT) FROM ledger_entries e"
    " WHERE e.guild_id = :g AND e.member_id = :m AND e.state = 'reserved'"
    " AND e.reset_at IS NULL AND e.created_at >= gs.since)"
)
_SERVER_USED = (
    "(SELECT CAST(COALESCE(SUM(e.cost), 0) AS BIGINT) FROM ledger_entries e"
    f" WHERE e.guild_id = :g AND {LIVE} AND e.created_at >= gs.since)"
)
_TOTAL_USED = (
    "(SELECT CAST(COALESCE(SUM(e.cost), 0) AS BIGINT) FROM ledger_entries e"
    f" WHERE {LIVE} AND e.created_at >= CAST(:t_since AS TEXT))"
)
_GRANTS = (
    "(SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM grants"
    " WHERE guild_id = :g AND member_id = :m AND created_at >= gs.since)"
)


def _limit_sql(role_ids: Collection[int]) -> tuple[str, dict[str, int]]:
    """SQL for a member's effective limit, and the parameters for their roles."""
    roles = list(dict.fromkeys(int(r) for r in role_ids))
    params = {f"r{i}": role for i, role in enumerate(roles)}
    role_limit = (
        "(SELECT MAX(credit_limit) FROM role_limits WHERE guild_id = :g"
        f" AND role_id IN ({', '.join(':' + name for name in params)}))"
        if roles
        else "NULL"
    )
    sql = (
        "(COALESCE((SELECT credit_limit FROM member_limits"
        "  WHERE guild_id = :g AND member_id = :m),"
        f" {role_limit}, gs.default_limit) + {_GRANTS})"
    )
    return sql, params


def _period_params(now: datetime) -> dict[str, str]:
    return {f"p_{period}": ts(period_start(now, period)) for period in PERIODS}


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
        # PostgreSQL group commit: reservations per lock keys, settlements per outcome.
        self._reserves: _Batcher[tuple[str, ...], tuple[str, dict[str, Any]], int] = _Batcher(
            self._reserve_batch
        )
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

    def _lock_keys(self, guild_id: int) -> tuple[str, ...]:
        """Advisory lock keys serialising reservations that share a limit (PostgreSQL)."""
        if self._total_budget:
            return (f"guild:{guild_id}", "total")
        return (f"guild:{guild_id}",)

    def _reserve_sql(self, limit_sql: str) -> str:
        total = f" AND {_TOTAL_USED} + :cost <= :t_budget" if self._total_budget else ""
        return (
            "INSERT INTO ledger_entries"
            " (id, guild_id, member_id, cost, state, job_id, created_at)"
            " SELECT CAST(:id AS TEXT), CAST(:g AS BIGINT), CAST(:m AS BIGINT),"
            " CAST(:cost AS BIGINT), 'reserved', CAST(:job AS TEXT), CAST(:now AS TEXT)"
            f" FROM {_GUILD}"
            f" WHERE {_MEMBER_USED} + :cost <= {limit_sql}"
            " AND (CASE WHEN gs.server_budget = 0 THEN 1"
            f"  WHEN {_SERVER_USED} + :cost <= gs.server_budget THEN 1 ELSE 0 END) = 1"
            f"{total}"
        )

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
        await self._ensure_guild(guild_id, tx)
        limit_sql, role_params = _limit_sql(role_ids)
        sql = self._reserve_sql(limit_sql)
        for attempt in range(1, RESERVE_ATTEMPTS + 1):
            now = self._clock()
            reservation = Reservation(uuid.uuid4().hex, guild_id, member_id, cost, job_id, now)
            params: dict[str, Any] = {
                "id": reservation.id,
                "g": guild_id,
                "m": member_id,
                "cost": cost,
                "job": job_id,
                "now": ts(now),
                **_period_params(now),
                **role_params,
            }
            if self._total_budget:
                params["t_since"] = ts(period_start(now, self._total_period))
                params["t_budget"] = self._total_budget
            if await self._insert_reservation(guild_id, sql, params, tx) == 1:
                return reservation
            denial, binds = await self._denial(params, limit_sql, now, tx)
            if binds or attempt == RESERVE_ATTEMPTS:
                return denial
            # Neither limit binds any more (a refund landed in between): try again.
        raise AssertionError("unreachable")

    async def _insert_reservation(
        self, guild_id: int, sql: str, params: dict[str, Any], tx: Transaction | None
    ) -> int:
        if tx is not None:
            await tx.lock(*self._lock_keys(guild_id))
            return await tx.execute(sql, params)
        if self._db.engine == "sqlite":
            # Database.write runs it inside BEGIN IMMEDIATE, shared with concurrent writes:
            # each later INSERT sees the earlier ones, so the sums include every reservation.
            return await self._db.write(sql, params)
        return await self._reserves.submit(self._lock_keys(guild_id), (sql, params))

    async def _reserve_batch(
        self, keys: tuple[str, ...], batch: list[tuple[str, dict[str, Any]]]
    ) -> list[int]:
        """PostgreSQL: reservations sharing lock keys, in one transaction under the locks.

        Each INSERT sees the ones before it in the transaction, and the locks make every
        other process's transaction for these keys wait, so the sums stay exact.
        """
        async with self._db.transaction() as tx:
            await tx.lock(*keys)
            if len(batch) == 1:
                sql, params = batch[0]
                return [await tx.execute(sql, params)]
            for sql, group in itertools.groupby(batch, key=lambda item: item[0]):
                await tx.executemany(sql, [params for _, params in group])
            rows = await tx.fetchall(
                "SELECT id FROM ledger_entries WHERE id = ANY(CAST(? AS TEXT[]))",
                ([params["id"] for _, params in batch],),
            )
        inserted = {row[0] for row in rows}
        return [1 if params["id"] in inserted else 0 for _, params in batch]

    async def _denial(
        self,
        params: dict[str, Any],
        limit_sql: str,
        now: datetime,
        tx: Transaction | None = None,
    ) -> tuple[Denial, bool]:
        """Which limit refused a reservation, and whether it still binds."""
        total = f", {_TOTAL_USED} AS total_used" if self._total_budget else ""
        sql = (
            f"SELECT gs.period, gs.server_budget, {_MEMBER_USED} AS used, {limit_sql} AS lim,"
            f" {_SERVER_USED} AS server_used{total} FROM {_GUILD}"
        )
        # Unused names in ``params`` are ignored by both engines' placeholder handling.
        row = await (tx.fetchone(sql, params) if tx else self._db.fetchone(sql, params))
        assert row is not None, "the guild's settings row exists (reserve ensures it)"
        cost: int = params["cost"]
        resets_at = period_end(now, row["period"])
        used, limit = int(row["used"]), max(0, int(row["lim"]))
        member = Denial("member_limit", used, limit, resets_at)
        if used + cost > limit:
            return member, True
        budget, server_used = int(row["server_budget"]), int(row["server_used"])
        if budget and server_used + cost > budget:
            return Denial("server_budget", server_used, budget, resets_at), True
        if self._total_budget and int(row["total_used"]) + cost > self._total_budget:
            total_resets = period_end(now, self._total_period)
            return (
                Denial("total_budget", int(row["total_used"]), self._total_budget, total_resets),
                True,
            )
        return member, False

    async def _settle(
        self,
        reservation_id: str,
        state: str,
        reason: str | None,
        tx: Transaction | None,
    ) -> bool:
        sql = (
            "UPDATE ledger_entries SET state = ?, reason = ?, settled_at = ?"
            " WHERE id = ? AND state = 'reserved'"
        )
        params = (state, reason, ts(self._clock()), reservation_id)
        if tx is not None:
            return await tx.execute(sql, params) == 1
        if self._db.engine == "sqlite":
            return await self._db.write(sql, params) == 1
        return await self._settles.submit((state, reason), reservation_id)

    async def _settle_batch(self, outcome: tuple[str, str | None], ids: list[str]) -> list[bool]:
        """PostgreSQL: settle many reservations the same way in one statement."""
        state, reason = outcome
        rows = await self._db.fetchall(
            "UPDATE ledger_entries SET state = ?, reason = ?, settled_at = ?"
            " WHERE id = ANY(CAST(? AS TEXT[])) AND state = 'reserved' RETURNING id",
            (state, reason, ts(self._clock()), ids),
        )
        changed = {row[0] for row in rows}
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
        limit_sql, role_params = _limit_sql(role_ids)
        row = await self._db.fetchone(
            f"SELECT gs.period, {_MEMBER_USED} AS used, {_MEMBER_PENDING} AS pending,"
            f" {limit_sql} AS lim FROM {_GUILD}",
            {"g": guild_id, "m": member_id, **_period_params(now), **role_params},
        )
        assert row is not None
        return Balance(
            used=int(row["used"]),
            pending=int(row["pending"]),
            limit=max(0, int(row["lim"])),
            period=row["period"],
            resets_at=period_end(now, row["period"]),
        )

    async def server_usage(self, guild_id: int) -> ServerUsage:
        """The guild's live credits this period and its server budget (budget alerts)."""
        await self._ensure_guild(guild_id)
        row = await self._db.fetchone(
            f"SELECT gs.server_budget, {_SERVER_USED} AS used FROM {_GUILD}",
            {"g": guild_id, **_period_params(self._clock())},
        )
        assert row is not None
        return ServerUsage(int(row["used"]), int(row["server_budget"]))

    async def total_usage(self) -> TotalUsage | None:
        """Credits all guilds used this total-budget period; None when there is no cap."""
        if not self._total_budget:
            return None
        now = self._clock()
        row = await self._db.fetchone(
            f"SELECT {_TOTAL_USED} AS used", {"t_since": ts(period_start(now, self._total_period))}
        )
        assert row is not None
        return TotalUsage(int(row["used"]), self._total_budget, period_end(now, self._total_period))

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
    async def _scalar(tx: Transaction, sql: str, params: Any) -> Any:
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
        params = {"g": guild_id, "m": member_id, **_period_params(now)}
        async with self._db.transaction() as tx:
            await self._ensure_guild(guild_id, tx)
            used = int(await self._scalar(tx, f"SELECT {_MEMBER_USED} FROM {_GUILD}", params))
            await tx.execute(
                "UPDATE ledger_entries SET reset_at = :now"
                " WHERE guild_id = :g AND member_id = :m AND reset_at IS NULL"
                f" AND created_at >= (SELECT gs.since FROM {_GUILD})",
                {**params, "now": ts(now)},
            )
            change = Change("reset_usage", f"member:{member_id}", str(used), "0")
            return await self._audit(tx, guild_id, actor_id, change)
