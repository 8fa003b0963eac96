"""What counts as a database that blinks, for both engines, in one place.

A managed PostgreSQL restarts, fails over and loses packets; a SQLite file can be held
locked by another program (a backup, an owner's ``sqlite3`` shell). These are expected
states, not bugs: the caller retries (a job's write), answers in plain words (a command),
or logs one WARNING line and looks again later (a side task). :func:`db_outage` says
whether an exception is one of them, and which kind, so the logs and the
``upscale_db_errors_total{kind}`` metric name it the same way everywhere.

Transient (:class:`DbOutageKind`):

- ``refused``: a new connection was refused (the server is down or restarting), or
  PostgreSQL answered ``cannot_connect_now`` (57P03: starting up or shutting down);
- ``reset``: an open connection was reset or closed under the bot, or PostgreSQL ended
  it with ``admin_shutdown`` (57P01, a restart or failover) or a related termination;
- ``timeout``: no answer in time (a partition, a stalled server, a pool with no free
  connection);
- ``serialization`` / ``deadlock``: PostgreSQL rolled the transaction back (40001,
  40P01); the same transaction again succeeds;
- ``locked``: SQLite's ``database is locked`` / ``busy`` past the busy timeout.

Not transient, but answered in words all the same: ``disk_full`` (SQLite's ``database or
disk is full``, ``ENOSPC``, PostgreSQL's ``disk_full`` 53100). It is returned by
:func:`db_outage` too (an owner must act; the member must not see a generic error), and
:func:`is_transient` says False for it: retrying it in a loop helps nobody.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import sqlite3

import asyncpg

__all__ = ["DbOutageKind", "db_outage", "is_transient"]


class DbOutageKind(enum.StrEnum):
    """Why the database did not answer; the ``kind`` label of ``upscale_db_errors_total``."""

    REFUSED = "refused"
    RESET = "reset"
    TIMEOUT = "timeout"
    SERIALIZATION = "serialization"
    DEADLOCK = "deadlock"
    LOCKED = "locked"
    DISK_FULL = "disk_full"


# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_STATES: dict[str, DbOutageKind] = {
    "57P01": DbOutageKind.RESET,  # admin_shutdown: a restart, a failover
    "57P02": DbOutageKind.RESET,  # crash_shutdown
    "57P03": DbOutageKind.REFUSED,  # cannot_connect_now: starting up, shutting down
    "57P05": DbOutageKind.RESET,  # idle_session_timeout
    "08000": DbOutageKind.RESET,  # connection_exception
    "08003": DbOutageKind.RESET,  # connection_does_not_exist
    "08006": DbOutageKind.RESET,  # connection_failure
    "08001": DbOutageKind.REFUSED,  # sqlclient_unable_to_establish_sqlconnection
    "08004": DbOutageKind.REFUSED,  # sqlserver_rejected_establishment_of_sqlconnection
    "53300": DbOutageKind.REFUSED,  # too_many_connections (a failover's new primary)
    "40001": DbOutageKind.SERIALIZATION,
    "40P01": DbOutageKind.DEADLOCK,
    "53100": DbOutageKind.DISK_FULL,
    "25006": DbOutageKind.RESET,  # read_only_sql_transaction: still on the old primary
}
_RESET_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN}
_REFUSED_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}


def db_outage(exc: BaseException) -> DbOutageKind | None:
    """The kind of database outage ``exc`` (or what caused it) is; None for anything else
    (a bug, a constraint violation, bad SQL)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = _kind_of(current)
        if kind is not None:
            return kind
        current = current.__cause__ or current.__context__
    return None


def is_transient(exc: BaseException) -> bool:
    """True when the same work may succeed in a moment: retry it, do not fail it."""
    kind = db_outage(exc)
    return kind is not None and kind is not DbOutageKind.DISK_FULL


def _kind_of(exc: BaseException) -> DbOutageKind | None:
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None)
        return _PG_STATES.get(state) if isinstance(state, str) else None
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        # "connection is closed", "connection was closed in the middle of operation",
        # "pool is closing" (a reconnect is under way): the connection went away.
        text = str(exc).lower()
        if "closed" in text or "closing" in text:
            return DbOutageKind.RESET
        return None
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return DbOutageKind.LOCKED
        if "disk is full" in text or "disk full" in text:
            return DbOutageKind.DISK_FULL
        return None
    if isinstance(exc, sqlite3.DatabaseError) and "disk is full" in str(exc).lower():
        return DbOutageKind.DISK_FULL
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return DbOutageKind.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return DbOutageKind.REFUSED
    if isinstance(exc, ConnectionError | EOFError):
        return DbOutageKind.RESET
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return DbOutageKind.DISK_FULL
        if exc.errno in _REFUSED_ERRNOS:
            return DbOutageKind.REFUSED
        if exc.errno in _RESET_ERRNOS:
            return DbOutageKind.RESET
        if exc.errno == errno.ETIMEDOUT:
            return DbOutageKind.TIMEOUT
        # socket.gaierror (the host name does not resolve): the network, for now.
        if exc.errno is not None and exc.errno < 0:
            return DbOutageKind.REFUSED
    return None
