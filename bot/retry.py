"""Trying again: one exponential backoff and one retry loop for the whole bot.

Every loop that tries something again (1min.ai calls, a job waiting out a 429, a lookup
of an already-posted result, start-up's network checks, the LISTEN connection) asks a
:class:`Backoff` for its next wait instead of writing its own formula::

    backoff = Backoff(base=2.0, cap=60.0)
    await asyncio.sleep(backoff.delay(attempt))      # attempt 1, 2, 3...

The wait doubles from ``base`` up to ``cap``; with ``jitter`` it is drawn from the upper
half of that ceiling ("equal jitter"), so callers that failed together do not all come
back in the same instant, while each still waits at least half the ceiling.

Where the whole loop is the usual one (call, catch, decide, log, wait, call again),
:func:`retry` runs it, and the caller writes only the decision: which failures are worth
another try and how long to wait first (a ``Retry-After``, a backoff, a deadline)::

    def wait(err: RateLimited, failures: int) -> float | None:
        return None if failures == 3 else err.retry_after or backoff.delay(failures)

    result = await retry(call, RateLimited, wait)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Backoff", "retry"]

_T = TypeVar("_T")
_E = TypeVar("_E", bound=BaseException)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``base`` seconds, doubling per attempt, at most ``cap``.

    A ``base`` of 0 never waits (tests use it to keep waits out of the clock).
    """

    base: float
    cap: float
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < self.base:
            raise ValueError("backoff needs 0 <= base <= cap")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after the ``attempt``-th failure (1-based)."""
        return min(self.cap, self.base * 2.0 ** max(0, attempt - 1))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure."""
        ceiling = self.ceiling(attempt)
        return random.uniform(ceiling / 2, ceiling) if self.jitter else ceiling


async def retry(
    call: Callable[[], Awaitable[_T]],
    errors: type[_E],
    wait: Callable[[_E, int], float | None],
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> _T:
    """Await ``call()`` until it returns; after a failure, wait and call it again.

    When ``call()`` raises an instance of ``errors``, ``wait(error, failures)`` decides
    (``failures`` counts from 1): it returns the seconds to wait before the next call, or
    None to raise that error now. It is also where the caller logs the retry, and it may
    raise an error of its own instead (start-up's :class:`bot.app.startup.GaveUp`). Any other
    exception propagates at once (so does a cancellation, unless ``errors`` is
    :class:`BaseException`). ``sleep`` does the waiting (default :func:`asyncio.sleep`,
    looked up at each wait so tests may replace it).
    """
    failures = 0
    while True:
        try:
            return await call()
        except errors as err:
            failures += 1
            delay = wait(err, failures)
            if delay is None:
                raise
        await (sleep or asyncio.sleep)(delay)
