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

- :mod:`~bot.ledger.facade`: :class:`Ledger`, the one object its users hold;
- :mod:`~bot.ledger.core`: what the parts share (database, clock, the owner's defaults,
  the usage counters of :mod:`~bot.ledger.counters`), given to each part explicitly;
- :mod:`~bot.ledger.reservations`: reserve, commit, refund: the hot path;
- :mod:`~bot.ledger.quota`: moderators' changes (a table of settings), budget alerts;
- :mod:`~bot.ledger.reports`: ``/usage`` and the audit log;
- :mod:`~bot.ledger.rollups`: running totals for reports and budgets;
- :mod:`~bot.ledger.periods`: periods, their starts and ends;
- :mod:`~bot.ledger.values`: the values in and out, and :class:`LedgerValueError`;
- :mod:`~bot.ledger.sql`: lists of values for SQL, and example values for plans.

The public surface (``__all__``) is :class:`Ledger` and the values its methods take and
return; it is free of engine specifics (plain values and frozen dataclasses in and out;
``tx`` is whatever :meth:`bot.db.Database.transaction` yields). SQL here is portable
(lists of ids aside, see :func:`bot.ledger.sql.sql_list`): parameters whose type
PostgreSQL cannot infer are ``CAST``, sums are ``CAST`` to BIGINT. Every statement that
runs per reservation, settlement or command is listed in its module's
``HOT_STATEMENTS``, and must read through an index at any size
(``tests/test_hot_plans.py``).
"""

from __future__ import annotations

from bot.ledger.facade import Ledger
from bot.ledger.periods import PERIODS, Period, period_end
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
    QuotaChanged,
    Reservation,
    ServerUsage,
    TotalUsage,
    UsageReport,
    guild_lock,
)

__all__ = [
    "MAX_CREDITS",
    "PERIODS",
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
    "QuotaChanged",
    "Reservation",
    "ServerUsage",
    "TotalUsage",
    "UsageReport",
    "guild_lock",
    "period_end",
]
