"""Reservations: reserve, commit, refund; the ledger's hot path.

A job first *reserves* its cost; the reservation is *committed* when the result has been
delivered or *refunded* when anything fails. Settlement is final and idempotent: a second
commit or refund, a refund after a commit, or a commit after a refund changes nothing
and returns False. Reserved-but-unsettled credits count as used, so a member can never go
past a limit however many requests arrive at once.

Each reservation is decided under the guild's lock (and the total budget's, when this
process enforces one) from the usage counters (:mod:`bot.ledger.counters`): a few rows
read, a few rows written, whatever the size of the history. On SQLite the lock is
``BEGIN IMMEDIATE`` (every writer serialised, several processes on one file included);
on PostgreSQL an advisory lock taken before anything is read, so every process's
reservations for a guild are serialised and each sees the ones committed before it.
Concurrent reservations of a guild in this process share one transaction, as do
settlements of one outcome (group commit, :mod:`bot.db.batching`). A reservation and a
refund also keep the rollups (:mod:`bot.ledger.rollups`) in the statements they write
anyway; a commit writes nothing but the entries.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from bot.db import HotStatement, RowsInsert, Transaction, parse_ts, ts
from bot.db.batching import GroupCommit
from bot.ledger.core import LedgerCore
from bot.ledger.periods import period_end, period_start
from bot.ledger.rollups import (
    ADD_LIVE,
    SAVE_MEMBER,
    TOTAL_LIVE,
    live_additions,
    member_row,
    refund_rollups,
)
from bot.ledger.sql import EXAMPLE_START, ids_param, listed, scalar, sql_list
from bot.ledger.values import (
    MAX_CREDITS,
    Balance,
    Denial,
    Reservation,
    ServerUsage,
    TotalUsage,
    guild_lock,
    is_int,
)

log = logging.getLogger(__name__)

RESERVE = RowsInsert(
    "ledger_entries",
    (
        ("id", "TEXT"),
        ("guild_id", "BIGINT"),
        ("member_id", "BIGINT"),
        ("cost", "BIGINT"),
        ("state", "TEXT"),
        ("job_id", "TEXT"),
        ("created_at", "TEXT"),
    ),
)
SETTLED_GUILDS = "SELECT DISTINCT guild_id FROM ledger_entries WHERE id IN (SELECT id FROM {ids} s)"
SETTLE = (
    "UPDATE ledger_entries SET state = :state, reason = :reason, settled_at = :now"
    " WHERE id IN (SELECT id FROM {ids} s) AND state = 'reserved'"
    " RETURNING id, guild_id, member_id, cost, created_at, reset_at"
)
PENDING = (
    "SELECT CAST(COALESCE(SUM(cost), 0) AS BIGINT) FROM ledger_entries"
    " WHERE guild_id = :g AND member_id = :m AND state = 'reserved'"
    " AND reset_at IS NULL AND created_at >= :since"
)
UNSETTLED = (
    "SELECT id, guild_id, member_id, cost, job_id, created_at FROM ledger_entries"
    " WHERE state = 'reserved' ORDER BY created_at, id"
)

RESERVATION = "SELECT cost, state FROM ledger_entries WHERE id = ?"

HOT_STATEMENTS: tuple[HotStatement, ...] = (
    HotStatement("a job's trail: its reservation", RESERVATION, ("0" * 32,)),
    RESERVE.hot("reserve: entries", ("r", 1, 2, 1, "reserved", None, EXAMPLE_START)),
    HotStatement(
        "refund: guilds to lock",
        listed(SETTLED_GUILDS, "TEXT"),
        lambda engine: {"ids": ids_param("TEXT", "r")(engine)},
    ),
    HotStatement(
        "settle: entries",
        listed(SETTLE, "TEXT"),
        lambda engine: {
            "state": "committed",
            "reason": None,
            "now": EXAMPLE_START,
            "ids": ids_param("TEXT", "r")(engine),
        },
    ),
    HotStatement("/credits: pending", PENDING, {"g": 1, "m": 2, "since": EXAMPLE_START}),
    HotStatement("start-up: unsettled reservations", UNSETTLED),
)


def effective_limit(
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


class Reservations:
    """Reserve, commit, refund, and the figures read from the counters."""

    def __init__(self, core: LedgerCore) -> None:
        self._core = core
        self._db = core.db
        self._clock = core.clock
        self._defaults = core.defaults
        self._counters = core.counters
        # Group commit: concurrent reservations per guild, settlements per outcome.
        self._reserves: GroupCommit[int, _Ask, Reservation | Denial] = GroupCommit(
            self._reserve_batch, name="ledger-reserve"
        )
        self._settles: GroupCommit[tuple[str, str | None], str, bool] = GroupCommit(
            self._settle_batch, name="ledger-settle"
        )

    def _lock_keys(self, guild_id: int) -> tuple[str, ...]:
        """Advisory lock keys serialising the writers of a guild's usage (PostgreSQL)."""
        if self._defaults.total_budget:
            return (guild_lock(guild_id), "total")
        return (guild_lock(guild_id),)

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
        if not is_int(cost) or not 0 < cost <= MAX_CREDITS:
            raise ValueError(f"cost must be a whole number from 1 to {MAX_CREDITS}")
        ask = _Ask(member_id, tuple(dict.fromkeys(int(r) for r in role_ids)), cost, job_id)
        if tx is not None:
            await self._core.ensure_guild_row(guild_id, tx)
            await tx.lock(*self._lock_keys(guild_id))
            (outcome,) = await self._reserve_locked(tx, guild_id, [ask])
            return outcome
        await self._core.ensure_guild_row(guild_id)
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
        counters, defaults = self._counters, self._defaults
        guild = await counters.guild(tx, guild_id, now)
        members = await counters.members(tx, guild_id, guild.since, [a.member_id for a in asks])
        role_limits = await counters.role_limits(
            tx, guild_id, [r for a in asks for r in a.role_ids]
        )
        total_used = 0
        if defaults.total_budget:
            start = ts(period_start(now, defaults.total_period))
            total = {"period": defaults.total_period, "start": start}
            total_used = int(await scalar(tx, TOTAL_LIVE, total))
        resets_at = period_end(now, guild.period)
        used = {m: state.used for m, state in members.items()}
        server_used = guild.used
        outcomes: list[Reservation | Denial] = []
        for ask in asks:
            member = members[ask.member_id]
            limit = effective_limit(
                guild.default_limit, member.override, role_limits, ask.role_ids, member.grants
            )
            mine = used[ask.member_id]
            if mine + ask.cost > limit:
                outcomes.append(Denial("member_limit", mine, max(0, limit), resets_at))
            elif guild.server_budget and server_used + ask.cost > guild.server_budget:
                outcomes.append(
                    Denial("server_budget", server_used, guild.server_budget, resets_at)
                )
            elif defaults.total_budget and total_used + ask.cost > defaults.total_budget:
                total_resets = period_end(now, defaults.total_period)
                outcomes.append(
                    Denial("total_budget", total_used, defaults.total_budget, total_resets)
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
            stamp = ts(now)
            entries = [
                (r.id, guild_id, r.member_id, r.cost, "reserved", r.job_id, stamp) for r in granted
            ]
            await RESERVE.run(tx, self._db.engine, entries)
        made: dict[int, list[int]] = {m: [0, 0] for m in members}
        for r in granted:
            made[r.member_id][0] += 1
            made[r.member_id][1] += r.cost
        changed = sorted(m for m, s in members.items() if s.stale or used[m] != s.used)
        if changed:
            rows = [member_row(guild_id, m, guild.since, used[m], now, *made[m]) for m in changed]
            await SAVE_MEMBER.run(tx, self._db.engine, rows)
        if guild.stale or granted:
            recount = (guild.period, guild.used) if guild.stale else None
            added = server_used - guild.used
            await tx.execute(ADD_LIVE, live_additions(guild_id, now, added, recount))
        return outcomes

    async def _settle(
        self, reservation_id: str, state: str, reason: str | None, tx: Transaction | None
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

        A refund gives the credits back to the usage counters that counted them and
        adds them to the rollups' refunds, under the guilds' locks; a commit changes no
        counter (reserved credits already count, and delivered is what stays reserved).
        """
        table, listed_ids = sql_list(self._db.engine, ids, "TEXT")
        refunding = state == "refunded"
        if refunding:
            guilds = await tx.fetchall(SETTLED_GUILDS.format(ids=table), {"ids": listed_ids})
            await tx.lock(*(guild_lock(int(r["guild_id"])) for r in guilds))
        rows = await tx.fetchall(
            SETTLE.format(ids=table),
            {"state": state, "reason": reason, "now": ts(self._clock()), "ids": listed_ids},
        )
        if refunding and rows:
            await refund_rollups(tx, rows)
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
        row = await self._db.fetchone(RESERVATION, (reservation_id,))
        return None if row is None else (int(row["cost"]), str(row["state"]))

    async def refund_unsettled(self, *, exclude_job_ids: Collection[str] = ()) -> list[Reservation]:
        """Refund reservations a crash left unsettled (except those of ``exclude_job_ids``).

        Meant for start-up, before new work is accepted. Returns what was refunded.
        """
        rows = await self._db.fetchall(UNSETTLED)
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

    # -- figures read from the counters -----------------------------------------------

    async def balance(self, guild_id: int, member_id: int, role_ids: Collection[int]) -> Balance:
        """Used, pending and limit for this period, and when it resets (for /credits)."""
        await self._core.ensure_guild_row(guild_id)
        now = self._clock()
        db, counters = self._db, self._counters
        guild = await counters.guild(db, guild_id, now)
        member = (await counters.members(db, guild_id, guild.since, [member_id]))[member_id]
        role_limits = await counters.role_limits(db, guild_id, role_ids)
        pending = await scalar(db, PENDING, {"g": guild_id, "m": member_id, "since": guild.since})
        limit = effective_limit(
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
        await self._core.ensure_guild_row(guild_id)
        guild = await self._counters.guild(self._db, guild_id, self._clock())
        return ServerUsage(guild.used, guild.server_budget)

    async def total_usage(self) -> TotalUsage | None:
        """Credits all guilds used this total-budget period; None when there is no cap."""
        budget, period = self._defaults.total_budget, self._defaults.total_period
        if not budget:
            return None
        now = self._clock()
        total = {"period": period, "start": ts(period_start(now, period))}
        used = await scalar(self._db, TOTAL_LIVE, total)
        return TotalUsage(int(used), budget, period_end(now, period))
