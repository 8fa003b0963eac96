"""Timestamps as the database stores them: UTC text in one sortable format everywhere.

``YYYY-MM-DD HH:MM:SS.ffffff`` compares as text in the order of time, on both engines,
so ranges (``created_at >= :since``) read through ordinary indexes.
"""

from __future__ import annotations

from datetime import UTC, datetime

TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def utc_now() -> datetime:
    return datetime.now(UTC)


def ts(when: datetime) -> str:
    """A UTC timestamp as stored (sortable text, ``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    if when.tzinfo is None:
        raise ValueError("naive datetime")
    return when.astimezone(UTC).strftime(TS_FORMAT)


def parse_ts(text: str) -> datetime:
    """The aware UTC datetime of a stored timestamp (inverse of :func:`ts`)."""
    return datetime.strptime(text, TS_FORMAT).replace(tzinfo=UTC)
