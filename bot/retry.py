"""How long to wait before trying again: one exponential backoff for the whole bot.

Every loop that tries something again (1min.ai calls, a job waiting out a 429, a lookup
of an already-posted result, start-up's network checks) asks a :class:`Backoff` for its
next wait instead of writing its own formula::

    backoff = Backoff(base=2.0, cap=60.0)
    await asyncio.sleep(backoff.delay(attempt))      # attempt 1, 2, 3...

The wait doubles from ``base`` up to ``cap``; with ``jitter`` it is drawn from the upper
half of that ceiling ("equal jitter"), so callers that failed together do not all come
back in the same instant, while each still waits at least half the ceiling.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``base`` seconds, doubling per attempt, at most ``cap``."""

    base: float
    cap: float
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError("backoff needs 0 < base <= cap")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after the ``attempt``-th failure (1-based)."""
        return min(self.cap, self.base * 2.0 ** max(0, attempt - 1))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure."""
        ceiling = self.ceiling(attempt)
        return random.uniform(ceiling / 2, ceiling) if self.jitter else ceiling
