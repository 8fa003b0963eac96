"""The ledger's front door: the one object the cogs, the job queue and the process use.

:class:`Ledger` builds one :class:`~bot.ledger.core.LedgerCore` (database, clock, the
owner's defaults, the usage counters) and the three parts that work on it, each given
the core explicitly: :class:`~bot.ledger.reservations.Reservations` (reserve, commit,
refund, and the figures read from the counters), :class:`~bot.ledger.quota.QuotaChanges`
(moderators' changes, budget alert claims) and :class:`~bot.ledger.reports.Reports`
(``/usage``, the audit log). Every method here hands the call to the part that owns it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime

from bot.db import Database, Transaction, utc_now
from bot.ledger.core import Defaults, LedgerCore
from bot.ledger.periods import Period
from bot.ledger.quota import QuotaChanges
from bot.ledger.reports import AUDIT_ROWS_SHOWN, Reports
from bot.ledger.reservations import Reservations
from bot.ledger.values import (
    AuditEntry,
    Balance,
    Change,
    Denial,
    GuildSettings,
    Reservation,
    ServerUsage,
    TotalUsage,
    UsageReport,
)


class Ledger:
    """Reservations, settlement, limits and reports for every guild.

    ``default_limit`` and ``default_period`` are a new guild's until its moderators change
    them; ``total_budget`` caps all guilds together per ``total_budget_period`` (0 = no
    cap). A value out of range raises :class:`~bot.ledger.values.LedgerValueError`.
    ``clock`` gives the current UTC time (tests set it).
    """

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
        defaults = Defaults(default_limit, default_period, total_budget, total_budget_period)
        self._core = LedgerCore(db, defaults, clock)
        self._reservations = Reservations(self._core)
        self._quota = QuotaChanges(self._core)
        self._reports = Reports(self._core)

    async def ensure_guild(self, guild_id: int) -> None:
        """Create the guild's settings row if it is missing (see
        :meth:`bot.ledger.core.LedgerCore.ensure_guild`)."""
        await self._core.ensure_guild(guild_id)

    # -- reservations ------------------------------------------------------------------

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
        """Reserve ``cost`` credits, or say which limit stops it (see
        :meth:`bot.ledger.reservations.Reservations.reserve`)."""
        return await self._reservations.reserve(
            guild_id, member_id, role_ids, cost, job_id=job_id, tx=tx
        )

    async def commit(self, reservation_id: str, *, tx: Transaction | None = None) -> bool:
        """Charge a reservation; True only when this call changed it."""
        return await self._reservations.commit(reservation_id, tx=tx)

    async def refund(
        self, reservation_id: str, reason: str, *, tx: Transaction | None = None
    ) -> bool:
        """Return a reservation's credits; True only when this call changed it."""
        return await self._reservations.refund(reservation_id, reason, tx=tx)

    async def reservation(self, reservation_id: str) -> tuple[int, str] | None:
        """A reservation's cost and state (reserved, committed or refunded), or None."""
        return await self._reservations.reservation(reservation_id)

    async def refund_unsettled(self, *, exclude_job_ids: Collection[str] = ()) -> list[Reservation]:
        """Refund reservations a crash left unsettled (at start-up); what was refunded."""
        return await self._reservations.refund_unsettled(exclude_job_ids=exclude_job_ids)

    async def balance(self, guild_id: int, member_id: int, role_ids: Collection[int]) -> Balance:
        """Used, pending and limit for this period, and when it resets (for /credits)."""
        return await self._reservations.balance(guild_id, member_id, role_ids)

    async def server_usage(self, guild_id: int) -> ServerUsage:
        """The guild's live credits this period and its server budget (budget alerts)."""
        return await self._reservations.server_usage(guild_id)

    async def total_usage(self) -> TotalUsage | None:
        """Credits all guilds used this total-budget period; None when there is no cap."""
        return await self._reservations.total_usage()

    # -- quota changes -----------------------------------------------------------------

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's limits (created with the configured defaults on first use)."""
        return await self._quota.guild_settings(guild_id)

    async def set_default_limit(self, guild_id: int, actor_id: int, limit: int) -> Change:
        """Limit for members without an override or a limited role."""
        return await self._quota.set_default_limit(guild_id, actor_id, limit)

    async def set_server_budget(self, guild_id: int, actor_id: int, limit: int) -> Change:
        """Total credits the whole guild may spend per period (0 = no server budget)."""
        return await self._quota.set_server_budget(guild_id, actor_id, limit)

    async def set_period(self, guild_id: int, actor_id: int, period: str) -> Change:
        """The accounting period: daily, weekly, monthly or lifetime."""
        return await self._quota.set_period(guild_id, actor_id, period)

    async def set_log_channel(self, guild_id: int, actor_id: int, channel_id: int | None) -> Change:
        """Where quota changes and budget alerts are posted (None stops posting)."""
        return await self._quota.set_log_channel(guild_id, actor_id, channel_id)

    async def set_role_limit(
        self, guild_id: int, actor_id: int, role_id: int, limit: int
    ) -> Change:
        """Limit for members holding the role (a member gets their most generous role)."""
        return await self._quota.set_role_limit(guild_id, actor_id, role_id, limit)

    async def set_member_limit(
        self, guild_id: int, actor_id: int, member_id: int, limit: int
    ) -> Change:
        """A per-member override: beats role limits and the default."""
        return await self._quota.set_member_limit(guild_id, actor_id, member_id, limit)

    async def clear_role_limit(self, guild_id: int, actor_id: int, role_id: int) -> Change:
        """Remove the role's limit (its members fall back to other roles or the default)."""
        return await self._quota.clear_role_limit(guild_id, actor_id, role_id)

    async def clear_member_limit(self, guild_id: int, actor_id: int, member_id: int) -> Change:
        """Remove the member's override."""
        return await self._quota.clear_member_limit(guild_id, actor_id, member_id)

    async def grant(self, guild_id: int, actor_id: int, member_id: int, amount: int) -> Change:
        """One-off extra credits (negative takes away) for the current period."""
        return await self._quota.grant(guild_id, actor_id, member_id, amount)

    async def reset_member(self, guild_id: int, actor_id: int, member_id: int) -> Change:
        """Zero a member's usage for this period (see
        :meth:`bot.ledger.quota.QuotaChanges.reset_member`)."""
        return await self._quota.reset_member(guild_id, actor_id, member_id)

    async def claim_budget_alert(self, guild_id: int, threshold_percent: int) -> bool:
        """True exactly once per guild, period and threshold: the caller posts the alert."""
        return await self._quota.claim_budget_alert(guild_id, threshold_percent)

    # -- reports -----------------------------------------------------------------------

    async def usage(self, guild_id: int, period: Period | None = None) -> UsageReport:
        """``/usage``: per member and per day since the period began (the guild's own
        unless ``period`` is given; see :meth:`bot.ledger.reports.Reports.usage`)."""
        return await self._reports.usage(guild_id, period)

    async def audit_log(self, guild_id: int, limit: int = AUDIT_ROWS_SHOWN) -> list[AuditEntry]:
        """The guild's most recent moderator changes, newest first."""
        return await self._reports.audit_log(guild_id, limit)
