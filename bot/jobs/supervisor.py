"""The one supervisor of the job queue's side tasks.

The queue runs a few loops beside its jobs: the dispatcher, the lease renewal,
housekeeping of the job tables, the 1min.ai circuit's probe. Each is written to survive
what it expects (a database that blinks is reported and looked at again later); a loop
that ends anyway while the queue runs (a bug, an error nobody expected) would leave the
process up but deaf: no claims, no renewals. The supervisor starts each loop, and when
one ends before the queue stops it logs that at ERROR, with the traceback, and starts it
again after a backoff. Its tasks' errors are always retrieved, so asyncio never reports
"Task exception was never retrieved".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bot.retry import Backoff

__all__ = ["RESTART_BACKOFF", "Supervisor"]

log = logging.getLogger(__name__)

RESTART_BACKOFF = Backoff(base=1.0, cap=30.0)


class Supervisor:
    """Keeps side tasks running until ``stopping`` is set; see the module docstring."""

    def __init__(self, stopping: asyncio.Event, *, backoff: Backoff = RESTART_BACKOFF) -> None:
        self._stopping = stopping
        self._backoff = backoff
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts = 0  # side tasks started again after they ended early

    def start(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop()`` (a coroutine function that runs until ``stopping`` is set),
        starting it again whenever it ends before that."""
        self._tasks.append(asyncio.create_task(self._keep(name, loop), name=name))

    async def join(self) -> None:
        """Wait for every side task to end (after ``stopping`` was set)."""
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.error("The %s task ended by an error; starting it again", name, exc_info=True)
            else:
                if self._stopping.is_set():
                    return
                log.error("The %s task ended while the queue runs; starting it again", name)
            failures += 1
            self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._backoff.delay(failures))
