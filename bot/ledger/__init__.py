"""The credit ledger: who may spend how much of the owner's 1min.ai credit, per period.

A job first *reserves* its cost; the reservation is *committed* when the result has been
delivered or *refunded* when anything fails. Settlement is final and idempotent, and
reserved-but-unsettled credits count as used, so a member can never go past a limit
however many requests arrive at once. Each reservation is decided under the guild's lock
from usage counters kept in step with the entries in the same transaction; the owner may
also cap all guilds together (``total_budget`` per ``total_budget_period``, 0 = none),
enforced in the same transaction. Periods are in UTC: daily from 00:00, weekly from
Monday 00:00, monthly from the 1st 00:00, or lifetime. Usage and grants count when they
were made inside the current period, so changing the period re-reads the history with
the new window. Every moderator change is written with its audit row in one transaction.

The package, one concern a module (each module's docstring says more):

- :mod:`~bot.ledger.periods`: period starts and ends;
- :mod:`~bot.ledger.values`: the values in and out, and :class:`LedgerValueError`;
- :mod:`~bot.ledger.reservations`: reserve, commit, refund: the hot path, decided from
  the usage counters of :mod:`~bot.ledger.counters`;
- :mod:`~bot.ledger.rollups`: running totals for reports and budgets;
- :mod:`~bot.ledger.quota`: moderators' changes (a table of settings), budget alerts;
- :mod:`~bot.ledger.reports`: ``/usage`` and the audit log.

The public surface is free of engine specifics (plain values and frozen dataclasses in
and out; ``tx`` is whatever :meth:`bot.db.Database.transaction` yields). SQL here is
portable (lists of ids aside, see :func:`bot.ledger.base.sql_list`): parameters whose
type PostgreSQL cannot infer are ``CAST``, sums are ``CAST`` to BIGINT. Every statement
that runs per reservation, settlement or command is listed in its module's
``HOT_STATEMENTS``, and must read through an index at any size
(``tests/test_hot_plans.py``).
"""

from __future__ import annotations

from bot.db import TS_FORMAT
from bot.ledger.periods import EPOCH, PERIODS, Period, period_end, period_start
from bot.ledger.quota import QuotaChanges
from bot.ledger.reports import Reports
from bot.ledger.reservations import Reservations
from bot.ledger.values import (
    MAX_CREDITS,
    AuditEntry,
    Balance,
    Change,
    DayUsage,
    Denial,
    GuildSettings,
    LedgerValueError,
    MemberUsage,
    Reservation,
    ServerUsage,
    TotalUsage,
    UsageReport,
    guild_lock,
)

__all__ = [
    "EPOCH",
    "MAX_CREDITS",
    "PERIODS",
    "TS_FORMAT",
    "AuditEntry",
    "Balance",
    "Change",
    "DayUsage",
    "Denial",
    "GuildSettings",
    "Ledger",
    "LedgerValueError",
    "MemberUsage",
    "Period",
    "Reservation",
    "ServerUsage",
    "TotalUsage",
    "UsageReport",
    "guild_lock",
    "period_end",
    "period_start",
]


class Ledger(Reservations, QuotaChanges, Reports):
    """Reservations, settlement, limits and reports for every guild.

    ``Ledger(db, default_limit=..., default_period=..., total_budget=0,
    total_budget_period="monthly", clock=utc_now)``; see :class:`bot.ledger.base.LedgerBase`.
    """
