"""The bot's one backoff and one retry loop (bot.retry), without waiting: every sleep is
recorded instead of slept."""

from __future__ import annotations

import asyncio
import random

import pytest

from bot.retry import Backoff, retry


class Flaky(Exception):
    """The failure the retried calls raise."""


class Calls:
    """An async call that fails with ``Flaky`` ``failures`` times, then returns "done"."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.count = 0

    async def __call__(self) -> str:
        self.count += 1
        if self.count <= self.failures:
            raise Flaky(f"failure {self.count}")
        return "done"


class Sleeps:
    """Records the waits :func:`retry` asks for instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# -- Backoff ---------------------------------------------------------------------------


def test_the_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    """Attempts 1, 2, 3... get base, 2 x base, 4 x base..., never more than the cap."""
    backoff = Backoff(base=0.5, cap=3.0)
    assert [backoff.ceiling(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_an_attempt_below_one_gets_the_base() -> None:
    """Attempt 0 (or less) is treated as the first: the base, not half of it."""
    assert Backoff(base=2.0, cap=60.0).ceiling(0) == 2.0


def test_without_jitter_the_delay_is_the_ceiling() -> None:
    """jitter=False: the wait is exactly the ceiling, every time."""
    backoff = Backoff(base=1.0, cap=15.0, jitter=False)
    assert [backoff.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 15.0]


def test_jitter_draws_from_the_upper_half_of_the_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal jitter: the wait is drawn uniformly between half the ceiling and the ceiling."""
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high - 0.01

    monkeypatch.setattr(random, "uniform", uniform)
    backoff = Backoff(base=2.0, cap=60.0)
    assert [backoff.delay(n) for n in (1, 3, 7)] == [1.99, 7.99, 59.99]
    assert drawn == [(1.0, 2.0), (4.0, 8.0), (30.0, 60.0)]


def test_jittered_delays_differ_between_callers() -> None:
    """Callers that failed together do not all come back at the same instant."""
    backoff = Backoff(base=2.0, cap=60.0)
    delays = {backoff.delay(4) for _ in range(50)}
    assert len(delays) > 1
    assert all(8.0 <= d <= 16.0 for d in delays)


def test_a_zero_base_never_waits() -> None:
    """Backoff(0, 0) is allowed and waits 0 s (clients under test use it)."""
    backoff = Backoff(base=0.0, cap=0.0)
    assert [backoff.delay(n) for n in range(1, 4)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("base", "cap"), [(-1.0, 5.0), (2.0, 1.0)])
def test_a_negative_base_or_a_cap_below_the_base_is_refused(base: float, cap: float) -> None:
    """A backoff that would wait a negative time, or less than its own base, is an error."""
    with pytest.raises(ValueError, match="0 <= base <= cap"):
        Backoff(base=base, cap=cap)


# -- retry -----------------------------------------------------------------------------


async def test_a_call_that_succeeds_is_made_once_and_never_waits() -> None:
    """No failure: one call, its result, no question to ``wait`` and no sleep."""
    call, sleeps = Calls(failures=0), Sleeps()

    def wait(err: Flaky, failures: int) -> float | None:
        raise AssertionError("wait asked without a failure")

    assert await retry(call, Flaky, wait, sleep=sleeps) == "done"
    assert (call.count, sleeps.waits) == (1, [])


async def test_each_failure_waits_what_wait_says_then_calls_again() -> None:
    """``wait`` sees each error with the failure count from 1; its answer is slept."""
    call, sleeps = Calls(failures=3), Sleeps()
    asked: list[tuple[str, int]] = []

    def wait(err: Flaky, failures: int) -> float | None:
        asked.append((str(err), failures))
        return failures / 10

    assert await retry(call, Flaky, wait, sleep=sleeps) == "done"
    assert asked == [("failure 1", 1), ("failure 2", 2), ("failure 3", 3)]
    assert (call.count, sleeps.waits) == (4, [0.1, 0.2, 0.3])


async def test_none_from_wait_raises_that_failure_at_once() -> None:
    """``wait`` returning None re-raises the very error it was given, without a sleep."""
    call, sleeps = Calls(failures=5), Sleeps()

    def wait(err: Flaky, failures: int) -> float | None:
        return None if failures == 2 else 1.0

    with pytest.raises(Flaky, match="failure 2"):
        await retry(call, Flaky, wait, sleep=sleeps)
    assert (call.count, sleeps.waits) == (2, [1.0])


async def test_an_error_outside_errors_propagates_without_a_retry() -> None:
    """Only ``errors`` are retried: anything else leaves at once, ``wait`` unasked."""
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        raise KeyError("not a retryable failure")

    def wait(err: Flaky, failures: int) -> float | None:
        raise AssertionError("wait asked for an error outside errors")

    with pytest.raises(KeyError):
        await retry(call, Flaky, wait, sleep=Sleeps())
    assert calls == 1


async def test_cancellation_is_not_retried() -> None:
    """A cancelled call is not a failure to retry, even with ``errors=Exception``."""

    async def call() -> str:
        raise asyncio.CancelledError

    def wait(err: Exception, failures: int) -> float | None:
        raise AssertionError("wait asked for a cancellation")

    with pytest.raises(asyncio.CancelledError):
        await retry(call, Exception, wait, sleep=Sleeps())


async def test_an_error_raised_by_wait_replaces_the_failure() -> None:
    """``wait`` may give up with an error of its own (start-up's GaveUp does)."""

    class GaveUp(Exception):
        pass

    def wait(err: Flaky, failures: int) -> float | None:
        raise GaveUp(f"gave up after {err}")

    with pytest.raises(GaveUp, match="gave up after failure 1"):
        await retry(Calls(failures=1), Flaky, wait, sleep=Sleeps())


async def test_without_sleep_it_waits_with_asyncio_sleep_as_it_is_at_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default sleep is asyncio.sleep looked up at each wait, so tests can replace it."""
    sleeps = Sleeps()
    monkeypatch.setattr(asyncio, "sleep", sleeps)
    assert await retry(Calls(failures=2), Flaky, lambda err, n: 30.0 * n) == "done"
    assert sleeps.waits == [30.0, 60.0]
