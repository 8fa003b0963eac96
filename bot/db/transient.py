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
import re
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
_SQLITE_CODES: dict[int, DbOutageKind] = {
    5: DbOutageKind.LOCKED,  # SQLITE_BUSY: another connection holds the lock
    6: DbOutageKind.LOCKED,  # SQLITE_LOCKED: a table locked within this connection's cache
    13: DbOutageKind.DISK_FULL,  # SQLITE_FULL: "database or disk is full"
}
_RESET_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN}
_REFUSED_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}
_MULTIPLE = "Multiple exceptions: "
_ERRNO_IN_TEXT = re.compile(r"\[Errno (-?\d+)\]")


def db_outage(exc: BaseException) -> DbOutageKind | None:
    """The kind of database outage ``exc`` (or what it was raised from) is; None for
    anything else (a bug, a constraint violation, bad SQL).

    Only explicit causes (``raise ... from``) are followed, not the exception being
    handled when ``exc`` was raised: a bug in an ``except`` block that handles an outage
    is still a bug.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = _kind_of(current)
        if kind is not None:
            return kind
        current = current.__cause__
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
        # "connection is closed" (lost under the bot), "... the underlying connection is
        # closed", "pool is closing" / "pool is closed" (this process is shutting down:
        # nothing to fail, the work is left to whoever takes it over).
        text = str(exc).lower()
        if "closed" in text or "closing" in text:
            return DbOutageKind.RESET
        return None
    if isinstance(exc, sqlite3.Error):
        return _sqlite_kind(exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return DbOutageKind.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return DbOutageKind.REFUSED
    if isinstance(exc, ConnectionError | EOFError):
        return DbOutageKind.RESET
    if isinstance(exc, OSError):
        if exc.errno is None and str(exc).startswith(_MULTIPLE):
            return _multiple_kind(str(exc))
        return _errno_kind(exc.errno)
    return None


def _sqlite_kind(exc: sqlite3.Error) -> DbOutageKind | None:
    """By SQLite's result code (its primary part: the low byte of an extended code), not
    by the text: "no such table: locked_jobs" is bad SQL, not a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return _SQLITE_CODES.get(code & 0xFF)
    # Raised by hand (no result code): SQLite's own wording.
    text = str(exc).lower()
    if text.startswith(("database is locked", "database table is locked")):
        return DbOutageKind.LOCKED
    if text.startswith("database or disk is full"):
        return DbOutageKind.DISK_FULL
    return None


def _errno_kind(number: int | None) -> DbOutageKind | None:
    if number is None:
        return None
    if number == errno.ENOSPC:
        return DbOutageKind.DISK_FULL
    if number in _REFUSED_ERRNOS:
        return DbOutageKind.REFUSED
    if number in _RESET_ERRNOS:
        return DbOutageKind.RESET
    if number == errno.ETIMEDOUT:
        return DbOutageKind.TIMEOUT
    # socket.gaierror (the host name does not resolve): the network, for now.
    if number < 0:
        return DbOutageKind.REFUSED
    return None


def _multiple_kind(text: str) -> DbOutageKind | None:
    """asyncio's connect to a host with several addresses (``localhost`` as ``::1`` and
    ``127.0.0.1``, a name with A and AAAA records) raises one ``OSError`` with no errno,
    "Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432, 0, 0), [Errno
    111] ...": an outage when every address failed with one."""
    kinds = [_errno_kind(int(number)) for number in _ERRNO_IN_TEXT.findall(text)]
    if not kinds or None in kinds:
        return None
    return DbOutageKind.REFUSED if DbOutageKind.REFUSED in kinds else kinds[0]
