"""Database errors in the log: one plain line per outage, not a traceback per retry.

A caller that survives a database error (a side task that looks again later, a loop
that retries) hands it to :func:`report_db_outage` with what it was doing::

    except Exception as exc:
        report_db_outage(log, "claiming a job", exc)

An outage (:func:`bot.db.transient.db_outage`: refused, reset, timeout, serialization,
deadlock, locked) is logged as one WARNING line that names what was being done, the
error's class and its message, e.g.::

    Database connection lost while claiming a job: ConnectionDoesNotExistError: connection
    was closed in the middle of operation (12 more in the last 10 s)

The traceback goes to DEBUG only. The same line (same logger, same ``doing``, same error
class) is written at most once per :data:`REPORT_WINDOW` seconds in a process; the next
one says how many were left out since the last. A full disk (``disk_full``) is reported
the same way at ERROR: an owner must act. Anything else is a bug, a constraint or bad
SQL: it goes to :func:`report_db_failure`, ERROR with the traceback, every time.

Every outage reported, written or left out, is counted by kind for whoever subscribed
(:func:`subscribe_outages`): the app's metrics count ``upscale_db_errors_total{kind}``
that way, so this layer imports nothing of the app.

``doing`` is a fixed phrase ("renewing job leases"), never with an id in it: it is part
of what makes two lines "the same".

:func:`through_outages` is the one loop that keeps trying a database operation through
an outage (a job's forward write: the job must not die of it), reporting each failure
this way and waiting with backoff (:mod:`bot.retry`) between tries.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bot.db.transient import DbOutageKind, db_outage, is_transient
from bot.retry import Backoff, retry

__all__ = [
    "OUTAGE_BACKOFF",
    "REPORT_WINDOW",
    "OutageListener",
    "OutageReporter",
    "report_db_failure",
    "report_db_outage",
    "subscribe_outages",
    "through_outages",
]

log = logging.getLogger(__name__)

REPORT_WINDOW = 10.0  # seconds; the same outage line is written at most once per window
MAX_MESSAGE = 300  # characters of an error's message kept in a line
_PRUNE_AT = 1_000  # lines remembered before old ones are forgotten

OutageListener = Callable[[DbOutageKind], None]
# Waits between tries of an operation through an outage: short, so that the holder of a
# job writes as soon as the database answers again (before a lapsed lease is taken over).
OUTAGE_BACKOFF = Backoff(base=0.1, cap=1.0)

_T = TypeVar("_T")

# How each kind reads at the start of a line.
_WHAT: dict[DbOutageKind, str] = {
    DbOutageKind.REFUSED: "Database refused the connection",
    DbOutageKind.RESET: "Database connection lost",
    DbOutageKind.TIMEOUT: "Database did not answer in time",
    DbOutageKind.SERIALIZATION: "Database transaction conflicted with another",
    DbOutageKind.DEADLOCK: "Database deadlock",
    DbOutageKind.LOCKED: "Database file locked by another connection",
    DbOutageKind.DISK_FULL: "Database disk full",
}


@dataclass(slots=True)
class _Line:
    written_at: float  # the clock's time when this line was last written
    left_out: int = 0  # reports of it since, not written


def describe(exc: BaseException) -> str:
    """``ClassName: message`` on one line (the message shortened), or the class alone."""
    name = type(exc).__name__
    message = " ".join(str(exc).split())
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return f"{name}: {message}" if message else name


class OutageReporter:
    """Writes and counts the outage lines of one process (see the module docstring).

    ``clock`` (monotonic seconds) and ``window`` are for tests; the bot uses the
    module's functions, which share one reporter.
    """

    def __init__(
        self, *, window: float = REPORT_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window
        self._clock = clock
        self._lines: dict[tuple[str, str, str], _Line] = {}
        self._listeners: list[Callable[[], OutageListener | None]] = []
        self._lock = threading.Lock()  # reports may come from any thread

    def subscribe(self, listener: OutageListener, *, weak: bool = False) -> Callable[[], None]:
        """Call ``listener`` with the kind of every outage reported (written or left
        out); returns the call that unsubscribes it. ``weak``: hold a bound method
        weakly, so its object is not kept alive for it (and is dropped once gone)."""
        ref: Callable[[], OutageListener | None]
        if weak:
            ref = weakref.WeakMethod(listener)
        else:

            def ref() -> OutageListener:
                return listener

        with self._lock:
            self._listeners.append(ref)

        def unsubscribe() -> None:
            with self._lock:
                if ref in self._listeners:
                    self._listeners.remove(ref)

        return unsubscribe

    def report(self, logger: logging.Logger, doing: str, exc: BaseException) -> None:
        """An error survived while ``doing``: an outage is one line at most per window
        (WARNING; ERROR for a full disk), anything else :meth:`failure`."""
        kind = db_outage(exc)
        if kind is None:
            self.failure(logger, doing, exc)
            return
        self._count(kind)
        now = self._clock()
        key = (logger.name, doing, f"{type(exc).__module__}.{type(exc).__qualname__}")
        with self._lock:
            line = self._lines.get(key)
            if line is not None and now - line.written_at < self._window:
                line.left_out += 1
                return
            self._lines[key] = _Line(now)
            if len(self._lines) > _PRUNE_AT:
                self._forget_before(now - self._window)
        suffix = ""
        if line is not None and line.left_out:
            suffix = f" ({line.left_out} more in the last {now - line.written_at:.0f} s)"
        level = logging.ERROR if kind is DbOutageKind.DISK_FULL else logging.WARNING
        logger.log(level, "%s while %s: %s%s", _WHAT[kind], doing, describe(exc), suffix)
        logger.debug("The database error while %s, in full:", doing, exc_info=exc)

    def failure(self, logger: logging.Logger, doing: str, exc: BaseException) -> None:
        """A database error that is no outage (a bug, a constraint, bad SQL): ERROR with
        the traceback, every time, not counted as an outage."""
        logger.error("Database error while %s: %s", doing, describe(exc), exc_info=exc)

    def _count(self, kind: DbOutageKind) -> None:
        with self._lock:
            refs = list(self._listeners)
        for ref in refs:
            listener = ref()
            if listener is None:  # a weak listener whose object is gone
                with self._lock:
                    if ref in self._listeners:
                        self._listeners.remove(ref)
                continue
            try:
                listener(kind)
            except Exception:
                log.warning("A database outage listener failed", exc_info=True)

    def _forget_before(self, cutoff: float) -> None:
        """Drop lines last written before ``cutoff`` with nothing left out (the caller
        holds the lock)."""
        for key, line in list(self._lines.items()):
            if line.written_at < cutoff and not line.left_out:
                del self._lines[key]


_REPORTER = OutageReporter()


def report_db_outage(logger: logging.Logger, doing: str, exc: BaseException) -> None:
    """Report a database error survived while ``doing`` (a fixed phrase, e.g. "claiming
    a job"): see the module docstring. Never raises."""
    _REPORTER.report(logger, doing, exc)


def report_db_failure(logger: logging.Logger, doing: str, exc: BaseException) -> None:
    """Report a database error that is no outage: ERROR with the traceback."""
    _REPORTER.failure(logger, doing, exc)


def subscribe_outages(listener: OutageListener, *, weak: bool = False) -> Callable[[], None]:
    """Hear the kind of every outage this process reports (see
    :meth:`OutageReporter.subscribe`); returns the call that unsubscribes."""
    return _REPORTER.subscribe(listener, weak=weak)


async def through_outages(
    call: Callable[[], Awaitable[_T]],
    *,
    logger: logging.Logger,
    doing: str,
    still: Callable[[], bool] | None = None,
    backoff: Backoff = OUTAGE_BACKOFF,
    unless: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> _T:
    """Await ``call()`` until it returns, trying again after each transient database
    error (reported with :func:`report_db_outage`) while ``still()`` says it is worth it
    (default: always). Anything else, or a transient error once ``still()`` is False,
    is raised. So is an error of the ``unless`` types, whatever it was raised from: the
    errors of another service's client (1min.ai's time-out, raised from a
    ``TimeoutError``, is not the database's)."""

    def wait(exc: Exception, failures: int) -> float | None:
        if isinstance(exc, unless) or not is_transient(exc):
            return None
        if still is not None and not still():
            return None
        report_db_outage(logger, doing, exc)
        return backoff.delay(failures)

    return await retry(call, Exception, wait)
