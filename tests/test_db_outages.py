"""Database errors in the log (bot.db.outages): one plain line per outage, at most one
per window, the count of those left out, the traceback at DEBUG only; bugs at ERROR with
their traceback; every outage counted for the listeners. The clock is the test's.

Which errors are outages is bot.db.transient's (tests/test_db_transient.py, on the real
engines); here the errors are built by hand.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import weakref
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from bot.db.outages import REPORT_WINDOW, OutageReporter, through_outages
from bot.db.transient import DbOutageKind
from bot.retry import Backoff

LOGGER = "tests.db.outages"
REFUSED = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reporter(clock: Clock) -> OutageReporter:
    return OutageReporter(clock=clock)


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.INFO, logger=LOGGER)
    return logging.getLogger(LOGGER)


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= level]


# -- one line ----------------------------------------------------------------------------------


def test_an_outage_is_one_warning_line_naming_what_was_done_and_the_error(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    reporter.report(log, "claiming a job", REFUSED)
    [line] = lines(caplog)
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        "Database refused the connection while claiming a job: "
        "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)"
    )


def test_an_outage_line_carries_no_traceback(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        raise REFUSED
    except OSError as exc:
        reporter.report(log, "claiming a job", exc)
    assert [r.exc_info for r in lines(caplog)] == [None]


def test_the_traceback_is_written_at_debug(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    try:
        raise REFUSED
    except OSError as exc:
        reporter.report(log, "claiming a job", exc)
    debug = [r for r in lines(caplog, logging.DEBUG) if r.levelno == logging.DEBUG]
    assert len(debug) == 1
    assert debug[0].exc_info is not None and debug[0].exc_info[1] is REFUSED


def test_a_message_on_several_lines_is_written_on_one(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    exc = asyncpg.exceptions.AdminShutdownError(
        "terminating connection\n  due to administrator command"
    )
    reporter.report(log, "renewing job leases", exc)
    [line] = lines(caplog)
    assert "\n" not in line.getMessage()
    assert line.getMessage().endswith(
        "AdminShutdownError: terminating connection due to administrator command"
    )


def test_an_error_without_a_message_is_named_by_its_class(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    reporter.report(log, "reading the queue", TimeoutError())
    [line] = lines(caplog)
    assert (
        line.getMessage() == "Database did not answer in time while reading the queue: TimeoutError"
    )


def test_a_full_disk_is_one_error_line_without_a_traceback(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """An owner must act on a full disk: ERROR, but still one line and rate-limited."""
    reporter.report(log, "recording a job", sqlite3.OperationalError("database or disk is full"))
    reporter.report(log, "recording a job", sqlite3.OperationalError("database or disk is full"))
    [line] = lines(caplog)
    assert line.levelno == logging.ERROR
    assert line.exc_info is None
    assert line.getMessage().startswith("Database disk full while recording a job")


# -- at most once per window -------------------------------------------------------------------


def test_the_same_outage_is_written_once_per_window(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    for _ in range(20):
        reporter.report(log, "claiming a job", REFUSED)
        clock.now += (REPORT_WINDOW - 0.1) / 20
    assert len(lines(caplog)) == 1


def test_the_next_line_says_how_many_were_left_out(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    reporter.report(log, "claiming a job", REFUSED)
    for _ in range(12):
        clock.now += 0.5
        reporter.report(log, "claiming a job", REFUSED)
    clock.now += REPORT_WINDOW - 6.0 + 0.2  # 10.2 s after the first line
    reporter.report(log, "claiming a job", REFUSED)
    first, second = lines(caplog)
    assert "more" not in first.getMessage()
    assert second.getMessage().endswith(" (12 more in the last 10 s)")


def test_a_line_after_a_quiet_window_has_no_count(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    reporter.report(log, "claiming a job", REFUSED)
    clock.now += REPORT_WINDOW * 3
    reporter.report(log, "claiming a job", REFUSED)
    assert [line.getMessage().endswith("5432)") for line in lines(caplog)] == [True, True]


def test_the_count_starts_again_after_each_line(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    reporter.report(log, "claiming a job", REFUSED)
    reporter.report(log, "claiming a job", REFUSED)
    clock.now += REPORT_WINDOW
    reporter.report(log, "claiming a job", REFUSED)  # written: "(1 more ...)"
    reporter.report(log, "claiming a job", REFUSED)
    reporter.report(log, "claiming a job", REFUSED)
    clock.now += REPORT_WINDOW
    reporter.report(log, "claiming a job", REFUSED)
    assert [line.getMessage()[-26:] for line in lines(caplog)][1:] == [
        " (1 more in the last 10 s)",
        " (2 more in the last 10 s)",
    ]


@pytest.mark.parametrize(
    ("doing", "exc", "logger"),
    [
        ("renewing job leases", REFUSED, LOGGER),
        ("claiming a job", ConnectionResetError(104, "Connection reset by peer"), LOGGER),
        ("claiming a job", REFUSED, LOGGER + ".other"),
    ],
    ids=["doing", "error class", "logger"],
)
def test_a_different_doing_error_class_or_logger_is_a_line_of_its_own(
    reporter: OutageReporter,
    caplog: pytest.LogCaptureFixture,
    doing: str,
    exc: BaseException,
    logger: str,
) -> None:
    caplog.set_level(logging.INFO)
    reporter.report(logging.getLogger(LOGGER), "claiming a job", REFUSED)
    reporter.report(logging.getLogger(logger), doing, exc)
    assert len([r for r in caplog.records if r.name.startswith(LOGGER)]) == 2


# -- not an outage -----------------------------------------------------------------------------


def test_an_error_that_is_no_outage_is_an_error_with_its_traceback_every_time(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug, a constraint or bad SQL is never held back."""
    bug = sqlite3.IntegrityError("UNIQUE constraint failed: jobs.id")
    reporter.report(log, "recording a job", bug)
    reporter.report(log, "recording a job", bug)
    found = lines(caplog)
    assert [r.levelno for r in found] == [logging.ERROR, logging.ERROR]
    assert all(r.exc_info is not None and r.exc_info[1] is bug for r in found)
    assert found[0].getMessage() == (
        "Database error while recording a job: IntegrityError: UNIQUE constraint failed: jobs.id"
    )


def test_failure_keeps_error_with_the_traceback_even_for_an_outage(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """``failure`` is for callers that give up: the whole story, whatever the error."""
    reporter.failure(log, "starting up", REFUSED)
    [line] = lines(caplog)
    assert line.levelno == logging.ERROR
    assert line.exc_info is not None


# -- counted -----------------------------------------------------------------------------------


def test_every_outage_is_counted_by_kind_whether_written_or_not(
    reporter: OutageReporter, log: logging.Logger
) -> None:
    heard: list[DbOutageKind] = []
    reporter.subscribe(heard.append)
    for _ in range(3):
        reporter.report(log, "claiming a job", REFUSED)
    reporter.report(log, "reading the queue", TimeoutError())
    assert heard == [DbOutageKind.REFUSED] * 3 + [DbOutageKind.TIMEOUT]


def test_an_error_that_is_no_outage_is_not_counted(
    reporter: OutageReporter, log: logging.Logger
) -> None:
    heard: list[DbOutageKind] = []
    reporter.subscribe(heard.append)
    reporter.report(log, "recording a job", ValueError("a bug"))
    assert heard == []


def test_an_unsubscribed_listener_hears_nothing_more(
    reporter: OutageReporter, log: logging.Logger
) -> None:
    heard: list[DbOutageKind] = []
    unsubscribe = reporter.subscribe(heard.append)
    reporter.report(log, "claiming a job", REFUSED)
    unsubscribe()
    reporter.report(log, "claiming a job", REFUSED)
    assert heard == [DbOutageKind.REFUSED]


class Counter:
    def __init__(self) -> None:
        self.kinds: list[DbOutageKind] = []

    def hear(self, kind: DbOutageKind) -> None:
        self.kinds.append(kind)


def test_a_weak_listener_does_not_keep_its_object_alive(
    reporter: OutageReporter, log: logging.Logger
) -> None:
    counter = Counter()
    reporter.subscribe(counter.hear, weak=True)
    reporter.report(log, "claiming a job", REFUSED)
    assert counter.kinds == [DbOutageKind.REFUSED]
    gone = weakref.ref(counter)
    del counter
    gc.collect()
    assert gone() is None
    reporter.report(log, "claiming a job", REFUSED)  # and nothing breaks once it is gone


def test_a_failing_listener_does_not_stop_the_line(
    reporter: OutageReporter, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(kind: DbOutageKind) -> None:
        raise RuntimeError("listener bug")

    reporter.subscribe(broken)
    reporter.report(log, "claiming a job", REFUSED)
    assert [r.levelno for r in lines(caplog)] == [logging.WARNING]


# -- trying again through an outage ------------------------------------------------------------


class ServiceTimedOut(Exception):
    """Another service's client error, raised from a ``TimeoutError`` as such errors are."""


def flaky(errors: list[BaseException]) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    """A call that raises ``errors`` in turn, then answers; and the list of its tries."""
    tries: list[int] = []

    async def call() -> str:
        tries.append(len(tries) + 1)
        if errors:
            raise errors.pop(0)
        return "done"

    return tries, call


def raised_from(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause
    return exc


async def test_a_call_is_tried_again_through_an_outage_until_it_answers(
    log: logging.Logger,
) -> None:
    tries, call = flaky([REFUSED, ConnectionResetError()])
    fast = Backoff(base=0.001, cap=0.001)
    assert await through_outages(call, logger=log, doing="a test", backoff=fast) == "done"
    assert tries == [1, 2, 3]


async def test_an_error_of_the_unless_types_is_raised_at_once_whatever_its_cause(
    log: logging.Logger,
) -> None:
    """1min.ai's time-out is raised from a TimeoutError, which alone would be a database
    that did not answer: with ``unless`` it is the service's, and not tried again."""
    tries, call = flaky([raised_from(ServiceTimedOut("no answer"), TimeoutError())])
    fast = Backoff(base=0.001, cap=0.001)
    with pytest.raises(ServiceTimedOut):
        await through_outages(
            call, logger=log, doing="a test", backoff=fast, unless=ServiceTimedOut
        )
    assert tries == [1]
