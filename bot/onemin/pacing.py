"""Pacing: never send 1min.ai more than ``ONEMIN_REQUESTS_PER_MINUTE`` in any rolling minute.

:class:`RateGate` is a sliding-window limiter kept in the database, so every process of a
fleet shares one budget: each request (uploads, feature calls and their retries) first
records its start time in ``onemin_calls`` inside a transaction that also counts the
window, under a fleet-wide lock. When the window is full the caller waits until its
oldest request leaves the window. Within a process waiters form a first-come line, and
the job being paced hears its place in that line (see :data:`waiting_hook`).

The window is a little longer than 1min.ai's minute (:data:`WINDOW_MARGIN`): the service
counts arrivals, which come slightly after we record the start, by a latency that varies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from bot.db import Database

log = logging.getLogger(__name__)

WINDOW = 60.0  # seconds: 1min.ai's documented limit is per minute
WINDOW_MARGIN = 1.0  # seconds added to the window to absorb request latency
PRUNE_EVERY = 200  # requests between deletions of rows older than the window
LOCK_KEY = "onemin:rate"

# Set by the job queue in each job's task: called with the job's 1-based place in the
# line when its request has to wait for the window.
waiting_hook: ContextVar[Callable[[int], None] | None] = ContextVar("waiting_hook", default=None)
# Set by the job queue in each job's task: awaited once the request's turn is recorded,
# just before it is sent. It raises to stop a request for a job this process no longer
# holds: the wait for a turn (a database write) may outlast the job's lease.
before_send: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "before_send", default=None
)


class _Place:
    """A caller's place in the line; ``granted`` once a turn was recorded for it."""

    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted = False


class RateGate:
    """At most ``per_minute`` acquisitions in any ``WINDOW + WINDOW_MARGIN`` seconds."""

    def __init__(
        self,
        db: Database,
        per_minute: int,
        *,
        window: float = WINDOW + WINDOW_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self._db = db
        self.per_minute = per_minute
        self.window = window
        self._clock = clock
        self._line: list[_Place] = []
        self._turn = asyncio.Condition()
        self._since_prune = 0

    async def acquire(self) -> None:
        """Wait until a request may be sent now, and record it; then await the task's
        :data:`before_send` check, if any (what it raises, this raises)."""
        await self._turn_recorded()
        check = before_send.get()
        if check is not None:
            await check()

    async def _turn_recorded(self) -> None:
        """Wait until a request may be sent now, and record it.

        The caller at the head of the line records turns for everyone in line at that
        moment, as far as the window has room, in one transaction: when several jobs
        are ready at once (an upscale slot freed for each), none waits for the others'
        round trips to the database.
        """
        me = _Place()
        self._line.append(me)
        hook = waiting_hook.get()
        told: int | None = None
        try:
            while not me.granted:
                place = self._line.index(me) + 1
                if place > 1:
                    if hook is not None and told != place:
                        told = place
                        hook(place)
                    async with self._turn:
                        await self._turn.wait()
                    continue
                line = list(self._line)
                granted, wait = await self._take(len(line))
                for waiting in line[:granted]:
                    waiting.granted = True
                if granted:
                    return
                if hook is not None and told != 1:
                    told = 1
                    hook(1)
                await asyncio.sleep(wait)
        finally:
            self._line.remove(me)
            async with self._turn:
                self._turn.notify_all()

    async def window_used(self) -> int:
        """Requests recorded in the current window, fleet-wide (read only; for metrics)."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) AS n FROM onemin_calls WHERE at > ?", (self._clock() - self.window,)
        )
        return int(row["n"]) if row else 0

    async def _take(self, wanted: int) -> tuple[int, float]:
        """Record up to ``wanted`` requests as the window has room: (recorded, 0), or
        (0, seconds until it has room)."""
        now = self._clock()
        cutoff = now - self.window
        async with self._db.transaction(urgent=True) as tx:  # a request waits on it
            await tx.lock(LOCK_KEY)
            row = await tx.fetchone(
                "SELECT COUNT(*) AS n, MIN(at) AS first FROM onemin_calls WHERE at > ?",
                (cutoff,),
            )
            count = int(row["n"]) if row else 0
            room = min(wanted, self.per_minute - count)
            if room <= 0:
                first = float(row["first"]) if row and row["first"] is not None else now
                return 0, max(0.01, first + self.window - now + 0.005)
            await tx.executemany("INSERT INTO onemin_calls (at) VALUES (?)", [(now,)] * room)
            self._since_prune += room
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                await tx.execute("DELETE FROM onemin_calls WHERE at <= ?", (cutoff,))
        return room, 0.0
