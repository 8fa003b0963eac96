"""The credit ledger: who may spend how much of the owner's 1min.ai credit, per period.

A job first *reserves* its cost; the reservation is *committed* when the result has been
delivered or *refunded* when anything fails. Reserved-but-unsettled credits count as used,
so a member can never go past a limit, however many requests arrive at once: the check
and the write are one ``INSERT ... SELECT ... WHERE used + cost <= limit`` statement,
which SQLite runs atomically (and which stays correct with several processes).

Limits: a member's limit is their override if any, else the most generous of their role
limits, else the guild default; plus this period's grants. A guild may also have a
server budget shared by everyone (0 = none). Periods are in UTC: daily from 00:00,
weekly from Monday 00:00, monthly from the 1st, or lifetime.

The public surface is deliberately small and free of SQLite specifics, so a PostgreSQL
implementation can be added for multi-process deployments.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import aiosqlite

from bot.db import Database
from bot.settings import PERIODS, Period

log = logging.getLogger(__name__)

MAX_CREDITS = 1_000_000  # largest limit, budget or grant a moderator may set
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
LIVE = "state IN ('reserved', 'committed')"


class LedgerValueError(ValueError):
    """A moderator asked for an invalid value; the message is written for them."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def ts(when: datetime) -> str:
    """A UTC timestamp as stored (sortable text)."""
    if when.tzinfo is None:
        raise ValueError("naive datetime")
    return when.astimezone(UTC).strftime(TS_FORMAT)


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, TS_FORMAT).replace(tzinfo=UTC)


def period_start(now: datetime, period: Period) -> datetime:
    """Start (inclusive) of the period containing ``now``, in UTC."""
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
        return (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
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
    reason: Literal["member_limit", "server_budget"]
    used: int
    limit: int
    resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class Balance:
    used: int  # committed + reserved this period
    pending: int  # reserved, not yet settled
    limit: int  # effective limit including grants
    period: Period
    resets_at: datetime | None

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class GuildSettings:
    guild_id: int
    default_limit: int
    period: Period
    server_budget: int
    role_limits: dict[int, int] = field(default_factory=dict)
    member_limits: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemberUsage:
    member_id: int
    upscales: int  # committed reservations
    credits: int  # committed credits
    failures: int  # refunded reservations
    refunds: int  # refunded credits


@dataclass(frozen=True, slots=True)
class UsageReport:
    period: Period
    since: datetime
    members: list[MemberUsage]
    totals: MemberUsage


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor_id: int
    action: str
    target: str | None
    old_value: str | None
    new_value: str | None
    created_at: datetime


def _check_limit(value: int, what: str = "Limits") -> int:
    if not isinstance(value, int) or not 0 <= value <= MAX_CREDITS:
        raise LedgerValueError(f"{what} must be between 0 and {MAX_CREDITS:,} credits.")
    return value


def _check_period(period: str) -> Period:
    if period not in PERIODS:
        raise LedgerValueError("The period must be daily, weekly, monthly or lifetime.")
    return period  # type: ignore[return-value]


class Ledger:
    """Reservations, settlement, limits and reports for every guild."""

    def __init__(
        self,
        db: Database,
        *,
        default_limit: int,
        default_period: Period,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._db = db
        self._default_limit = _check_limit(default_limit)
        self._default_period = _check_period(default_period)
        self._clock = clock
        self._periods: dict[int, Period] = {}

    # -- guild settings ----------------------------------------------------------------

    async def _ensure_guild(self, guild_id: int, tx: aiosqlite.Connection | None = None) -> None:
        sql = (
            "INSERT INTO guild_settings (guild_id, default_limit, period, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (guild_id) DO NOTHING"
        )
        params = (guild_id, self._default_limit, self._default_period, ts(self._clock()))
        if tx is not None:
            await tx.execute(sql, params)
        else:
            await self._db.write(sql, params)

    async def _period(self, guild_id: int) -> Period:
        """The guild's period, cached (this process makes every change; see set_period)."""
        period = self._periods.get(guild_id)
        if period is None:
            period = (await self._settings_row(guild_id))["period"]
            self._periods[guild_id] = period
        return period

    async def _settings_row(self, guild_id: int) -> aiosqlite.Row:
        row = await self._db.fetchone(
            "SELECT default_limit, period, server_budget FROM guild_settings WHERE guild_id = ?",
            (guild_id,),
        )
        if row is None:
            await self._ensure_guild(guild_id)
            row = await self._db.fetchone(
                "SELECT default_limit, period, server_budget FROM guild_settings"
                " WHERE guild_id = ?",
                (guild_id,),
            )
        assert row is not None
        return row

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's limits (created with the configured defaults on first use)."""
        row = await self._settings_row(guild_id)
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
        )

    # -- the limit, as SQL -------------------------------------------------------------

    @staticmethod
    def _limit_sql(role_ids: Collection[int]) -> tuple[str, list[int]]:
        """SQL for a member's effective limit (params: g, m, [roles...], g, g, m, start)."""
        roles = list(dict.fromkeys(int(r) for r in role_ids))
        role_clause = (
            f"(SELECT MAX(credit_limit) FROM role_limits WHERE guild_id = :g"
            f" AND role_id IN ({', '.join(str(r) for r in roles)}))"
            if roles
            else "NULL"
        )
        sql = (
            "(COALESCE("
            "(SELECT credit_limit FROM member_limits WHERE guild_id = :g AND member_id = :m),"
            f" {role_clause},"
            " (SELECT default_limit FROM guild_settings WHERE guild_id = :g))"
            " + (SELECT COALESCE(SUM(amount), 0) FROM grants"
            "    WHERE guild_id = :g AND member_id = :m AND period_start = :start))"
        )
        return sql, roles

    _MEMBER_USED = (
        "(SELECT COALESCE(SUM(cost), 0) FROM ledger_entries"
        f" WHERE guild_id = :g AND member_id = :m AND {LIVE}"
        " AND created_at >= :start AND created_at > COALESCE((SELECT reset_at FROM usage_resets"
        "   WHERE guild_id = :g AND member_id = :m), ''))"
    )
    _SERVER_USED = (
        "(SELECT COALESCE(SUM(cost), 0) FROM ledger_entries"
        f" WHERE guild_id = :g AND {LIVE} AND created_at >= :start)"
    )

    # -- reservations ------------------------------------------------------------------

    async def reserve(
        self,
        guild_id: int,
        member_id: int,
        role_ids: Collection[int],
        cost: int,
        *,
        job_id: str | None = None,
    ) -> Reservation | Denial:
        """Reserve ``cost`` credits atomically, or say which limit stops it."""
        if cost <= 0:
            raise ValueError("cost must be positive")
        period = await self._period(guild_id)
        now = self._clock()
        start = ts(period_start(now, period))
        limit_sql, _ = self._limit_sql(role_ids)
        reservation = Reservation(
            id=uuid.uuid4().hex,
            guild_id=guild_id,
            member_id=member_id,
            cost=cost,
            job_id=job_id,
            created_at=now,
        )
        params = {
            "id": reservation.id,
            "g": guild_id,
            "m": member_id,
            "cost": cost,
            "job": job_id,
            "now": ts(now),
            "start": start,
        }
        # One conditional INSERT: the limit check and the write are a single statement,
        # run inside a BEGIN IMMEDIATE transaction by Database.write.
        inserted = await self._db.write(
            "INSERT INTO ledger_entries"
            " (id, guild_id, member_id, cost, state, job_id, created_at)"
            " SELECT :id, :g, :m, :cost, 'reserved', :job, :now"
            f" WHERE {self._MEMBER_USED} + :cost <= {limit_sql}"
            " AND ((SELECT server_budget FROM guild_settings WHERE guild_id = :g) = 0"
            f"  OR {self._SERVER_USED} + :cost"
            "     <= (SELECT server_budget FROM guild_settings WHERE guild_id = :g))",
            params,
        )
        if inserted == 1:
            return reservation
        return await self._denial(guild_id, member_id, role_ids, cost, now)

    async def _denial(
        self, guild_id: int, member_id: int, role_ids: Collection[int], cost: int, now: datetime
    ) -> Denial:
        settings = await self._settings_row(guild_id)
        period: Period = settings["period"]
        resets_at = period_end(now, period)
        balance = await self.balance(guild_id, member_id, role_ids)
        budget = settings["server_budget"]
        if balance.used + cost <= balance.limit and budget:
            row = await self._db.fetchone(
                f"SELECT {self._SERVER_USED} AS used",
                {"g": guild_id, "start": ts(period_start(now, period))},
            )
            used = int(row["used"]) if row else 0
            return Denial("server_budget", used, budget, resets_at)
        return Denial("member_limit", balance.used, balance.limit, resets_at)

    async def _settle(
        self,
        reservation_id: str,
        state: str,
        reason: str | None,
        tx: aiosqlite.Connection | None,
    ) -> bool:
        sql = (
            "UPDATE ledger_entries SET state = ?, reason = COALESCE(?, reason), settled_at = ?"
            " WHERE id = ? AND state = 'reserved'"
        )
        params = (state, reason, ts(self._clock()), reservation_id)
        if tx is not None:
            cursor = await tx.execute(sql, params)
            return cursor.rowcount == 1
        return await self._db.write(sql, params) == 1

    async def commit(self, reservation_id: str, *, tx: aiosqlite.Connection | None = None) -> bool:
        """Charge a reservation. Idempotent; True only when this call changed it.

        A refunded reservation stays refunded (commit after refund returns False).
        """
        return await self._settle(reservation_id, "committed", None, tx)

    async def refund(
        self, reservation_id: str, reason: str, *, tx: aiosqlite.Connection | None = None
    ) -> bool:
        """Return a reservation's credits at once. Idempotent; a committed one stays charged."""
        return await self._settle(reservation_id, "refunded", reason, tx)

    async def refund_unsettled(self, *, exclude_job_ids: Collection[str] = ()) -> list[Reservation]:
        """Refund reservations a crash left unsettled (except those of ``exclude_job_ids``)."""
        rows = await self._db.fetchall(
            "SELECT id, guild_id, member_id, cost, job_id, created_at FROM ledger_entries"
            " WHERE state = 'reserved'"
        )
        refunded: list[Reservation] = []
        excluded = set(exclude_job_ids)
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
        """Used, pending and limit for this period, and when it resets."""
        settings = await self._settings_row(guild_id)
        period: Period = settings["period"]
        now = self._clock()
        limit_sql, _ = self._limit_sql(role_ids)
        row = await self._db.fetchone(
            f"SELECT {self._MEMBER_USED} AS used, {limit_sql} AS lim,"
            " (SELECT COALESCE(SUM(cost), 0) FROM ledger_entries WHERE guild_id = :g"
            "  AND member_id = :m AND state = 'reserved') AS pending",
            {"g": guild_id, "m": member_id, "start": ts(period_start(now, period))},
        )
        assert row is not None
        return Balance(
            used=int(row["used"]),
            pending=int(row["pending"]),
            limit=max(0, int(row["lim"])),
            period=period,
            resets_at=period_end(now, period),
        )

    async def usage(self, guild_id: int, period: Period | None = None) -> UsageReport:
        """Per-member upscales, credits, failures and refunds since the period began."""
        settings = await self._settings_row(guild_id)
        chosen: Period = _check_period(period) if period else settings["period"]
        since = period_start(self._clock(), chosen)
        rows = await self._db.fetchall(
            "SELECT member_id,"
            " SUM(CASE WHEN state = 'committed' THEN 1 ELSE 0 END) AS upscales,"
            " SUM(CASE WHEN state = 'committed' THEN cost ELSE 0 END) AS credits,"
            " SUM(CASE WHEN state = 'refunded' THEN 1 ELSE 0 END) AS failures,"
            " SUM(CASE WHEN state = 'refunded' THEN cost ELSE 0 END) AS refunds"
            " FROM ledger_entries WHERE guild_id = ? AND created_at >= ?"
            " GROUP BY member_id ORDER BY credits DESC, member_id",
            (guild_id, ts(since)),
        )
        members = [
            MemberUsage(r["member_id"], r["upscales"], r["credits"], r["failures"], r["refunds"])
            for r in rows
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

    async def _change(
        self,
        guild_id: int,
        actor_id: int,
        action: str,
        target: str | None,
        read_sql: str,
        read_params: tuple[object, ...],
        write_sql: str,
        write_params: tuple[object, ...],
        new_value: object,
    ) -> None:
        """Read the old value, write the new one and the audit row, in one transaction."""
        async with self._db.transaction() as tx:
            await self._ensure_guild(guild_id, tx)
            async with tx.execute(read_sql, read_params) as cursor:
                row = await cursor.fetchone()
            old = None if row is None or row[0] is None else str(row[0])
            await tx.execute(write_sql, write_params)
            await tx.execute(
                "INSERT INTO audit_log (guild_id, actor_id, action, target, old_value,"
                " new_value, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    guild_id,
                    actor_id,
                    action,
                    target,
                    old,
                    None if new_value is None else str(new_value),
                    ts(self._clock()),
                ),
            )
        log.info("Guild %d: %s %s -> %s by %d", guild_id, action, target or "", new_value, actor_id)

    async def set_default_limit(self, guild_id: int, actor_id: int, limit: int) -> None:
        _check_limit(limit)
        await self._change(
            guild_id, actor_id, "default_limit", None,
            "SELECT default_limit FROM guild_settings WHERE guild_id = ?", (guild_id,),
            "UPDATE guild_settings SET default_limit = ? WHERE guild_id = ?", (limit, guild_id),
            limit,
        )  # fmt: skip

    async def set_server_budget(self, guild_id: int, actor_id: int, limit: int) -> None:
        _check_limit(limit, "The server budget")
        await self._change(
            guild_id, actor_id, "server_budget", None,
            "SELECT server_budget FROM guild_settings WHERE guild_id = ?", (guild_id,),
            "UPDATE guild_settings SET server_budget = ? WHERE guild_id = ?", (limit, guild_id),
            limit,
        )  # fmt: skip

    async def set_period(self, guild_id: int, actor_id: int, period: str) -> None:
        chosen = _check_period(period)
        await self._change(
            guild_id, actor_id, "period", None,
            "SELECT period FROM guild_settings WHERE guild_id = ?", (guild_id,),
            "UPDATE guild_settings SET period = ? WHERE guild_id = ?", (chosen, guild_id),
            chosen,
        )  # fmt: skip
        self._periods[guild_id] = chosen

    async def set_role_limit(self, guild_id: int, actor_id: int, role_id: int, limit: int) -> None:
        _check_limit(limit)
        await self._change(
            guild_id, actor_id, "role_limit", f"role:{role_id}",
            "SELECT credit_limit FROM role_limits WHERE guild_id = ? AND role_id = ?",
            (guild_id, role_id),
            "INSERT INTO role_limits (guild_id, role_id, credit_limit) VALUES (?, ?, ?)"
            " ON CONFLICT (guild_id, role_id) DO UPDATE SET credit_limit = excluded.credit_limit",
            (guild_id, role_id, limit),
            limit,
        )  # fmt: skip

    async def clear_role_limit(self, guild_id: int, actor_id: int, role_id: int) -> None:
        await self._change(
            guild_id, actor_id, "clear_role_limit", f"role:{role_id}",
            "SELECT credit_limit FROM role_limits WHERE guild_id = ? AND role_id = ?",
            (guild_id, role_id),
            "DELETE FROM role_limits WHERE guild_id = ? AND role_id = ?", (guild_id, role_id),
            None,
        )  # fmt: skip

    async def set_member_limit(
        self, guild_id: int, actor_id: int, member_id: int, limit: int
    ) -> None:
        _check_limit(limit)
        await self._change(
            guild_id, actor_id, "member_limit", f"member:{member_id}",
            "SELECT credit_limit FROM member_limits WHERE guild_id = ? AND member_id = ?",
            (guild_id, member_id),
            "INSERT INTO member_limits (guild_id, member_id, credit_limit) VALUES (?, ?, ?)"
            " ON CONFLICT (guild_id, member_id)"
            " DO UPDATE SET credit_limit = excluded.credit_limit",
            (guild_id, member_id, limit),
            limit,
        )  # fmt: skip

    async def clear_member_limit(self, guild_id: int, actor_id: int, member_id: int) -> None:
        await self._change(
            guild_id, actor_id, "clear_member_limit", f"member:{member_id}",
            "SELECT credit_limit FROM member_limits WHERE guild_id = ? AND member_id = ?",
            (guild_id, member_id),
            "DELETE FROM member_limits WHERE guild_id = ? AND member_id = ?",
            (guild_id, member_id),
            None,
        )  # fmt: skip

    async def grant(self, guild_id: int, actor_id: int, member_id: int, amount: int) -> None:
        """One-off extra credits (negative takes away) for the current period."""
        if not isinstance(amount, int) or amount == 0 or abs(amount) > MAX_CREDITS:
            raise LedgerValueError(
                f"A grant must be a non-zero number of credits between -{MAX_CREDITS:,}"
                f" and {MAX_CREDITS:,}."
            )
        settings = await self._settings_row(guild_id)
        now = self._clock()
        start = ts(period_start(now, settings["period"]))
        await self._change(
            guild_id, actor_id, "grant", f"member:{member_id}",
            "SELECT SUM(amount) FROM grants WHERE guild_id = ? AND member_id = ?"
            " AND period_start = ?", (guild_id, member_id, start),
            "INSERT INTO grants (guild_id, member_id, amount, period_start, actor_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)", (guild_id, member_id, amount, start, actor_id, ts(now)),
            amount,
        )  # fmt: skip

    async def reset_member(self, guild_id: int, actor_id: int, member_id: int) -> None:
        """Zero a member's usage for this period (history is kept for reports)."""
        now = ts(self._clock())
        await self._change(
            guild_id, actor_id, "reset_usage", f"member:{member_id}",
            "SELECT reset_at FROM usage_resets WHERE guild_id = ? AND member_id = ?",
            (guild_id, member_id),
            "INSERT INTO usage_resets (guild_id, member_id, reset_at) VALUES (?, ?, ?)"
            " ON CONFLICT (guild_id, member_id) DO UPDATE SET reset_at = excluded.reset_at",
            (guild_id, member_id, now),
            now,
        )  # fmt: skip
