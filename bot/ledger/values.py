"""What goes in and out of the ledger: plain values and frozen dataclasses, and the one
error a moderator can cause (:class:`LedgerValueError`), whose words are a catalogue
text rendered in the moderator's language by the front end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal, NamedTuple

from bot.i18n import Text
from bot.ledger.periods import PERIODS, Period

MAX_CREDITS = 1_000_000  # largest limit, budget, grant or cost, in credits


class LedgerValueError(ValueError):
    """A moderator asked for an invalid value. :attr:`text` says why, for them (a
    ``quota.invalid.*`` catalogue text); ``str()`` is its English, for logs."""

    def __init__(self, text: Text) -> None:
        self.text = text
        super().__init__(text.english())


def guild_lock(guild_id: int) -> str:
    """The lock key that serialises a guild's reservations (``Transaction.lock``).

    Callers that must decide something together with a reservation (the job queue's
    per-member cap) take it first, in the reservation's transaction.
    """
    return f"guild:{guild_id}"


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_limit(value: int, invalid: Text | None = None) -> int:
    """``value`` if it is a whole number of credits from 0 to MAX_CREDITS; otherwise
    LedgerValueError with ``invalid`` (by default the text about limits)."""
    if not is_int(value) or not 0 <= value <= MAX_CREDITS:
        raise LedgerValueError(invalid or Text.of("quota.invalid.limit", max=MAX_CREDITS))
    return value


def check_period(period: str) -> Period:
    """``period`` as a :data:`~bot.ledger.periods.Period`, or LedgerValueError."""
    for known in PERIODS:
        if period == known:
            return known
    raise LedgerValueError(Text.of("quota.invalid.period"))


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


@dataclass(frozen=True, slots=True)
class QuotaChanged:
    """A moderator's quota change in a server, for whoever keeps its quota log (the front
    end announces it as one event)."""

    guild_id: int
    actor_id: int  # the moderator
    change: Change


class ServerUsage(NamedTuple):
    used: int  # live (reserved + committed) credits of the guild this period
    budget: int  # the server budget; 0 = none


@dataclass(frozen=True, slots=True)
class TotalUsage:
    """The owner's total budget across all guilds, for /quota show."""

    used: int
    limit: int
    resets_at: datetime | None
