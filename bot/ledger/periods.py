"""Accounting periods, in UTC: daily from 00:00, weekly from Monday 00:00, monthly from
the 1st 00:00, or lifetime (since the epoch). :data:`Period` names one; the settings
read a guild's default period and the total budget's with these names.

Usage, grants and rollups are keyed by the start of the period they fall in, so a period
is always found through its start: :func:`period_start` for one period and
:func:`period_starts` for all four at once (cached per UTC day, as settlement needs them
for every entry it settles).
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from bot.db import ts

Period = Literal["daily", "weekly", "monthly", "lifetime"]
PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly", "lifetime")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # start of the "lifetime" period
_DAYS_CACHED = 4096  # distinct UTC days whose period starts are kept (about 11 years)


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


@functools.lru_cache(maxsize=_DAYS_CACHED)
def _starts_of_day(day: str) -> tuple[tuple[Period, str], ...]:
    midnight = datetime.combine(date.fromisoformat(day), time(), tzinfo=UTC)
    return tuple((period, ts(period_start(midnight, period))) for period in PERIODS)


def period_starts(stamp: str) -> tuple[tuple[Period, str], ...]:
    """Each period and the stored start of its period containing the stored timestamp
    ``stamp`` (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC)."""
    return _starts_of_day(stamp[:10])


def period_params(now: datetime) -> dict[str, str]:
    """``:p_daily`` ... ``:p_lifetime``: the stored start of each period containing ``now``
    (for SQL that picks one by a guild's period)."""
    return {f"p_{period}": start for period, start in period_starts(ts(now))}
