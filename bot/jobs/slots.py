"""The slot line: this process's jobs waiting for an upscale slot, in claim order.

At most ``max_concurrent`` jobs are with 1min.ai (uploading or upscaling) across the
fleet. A job claimed ahead waits here for one with its input loaded; until it has one
it has not called 1min.ai and can still be cancelled.

Only the head of the line looks for a slot: when one is freed anywhere in the fleet
(:meth:`SlotLine.freed`), or every ``poll_interval`` seconds, since a wake-up can be
lost. It hands the turn on when it has one; a freed slot does not send every waiting
job to the database at once. A look is one function the caller gives (in the pipeline,
one transaction under the fleet-wide slot lock): it takes a slot and says how many were
taken before, or says that every slot is taken. When its look saw another slot free, or
a slot was freed while it looked, the next job in line looks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

# One look for a slot: it takes one and returns the slots taken before it did, or None
# when every slot is taken. It may raise (e.g. Stopped: the job was cancelled meanwhile).
SlotLook = Callable[[], Awaitable[int | None]]


class SlotLine:
    """This process's jobs waiting for an upscale slot; see the module docstring."""

    def __init__(self, *, slots: int, poll_interval: float) -> None:
        self._slots = slots  # max_concurrent: slots in the whole fleet
        self._poll_interval = poll_interval
        self._line: list[asyncio.Event] = []  # one turn per waiting job, in claim order

    def __len__(self) -> int:
        return len(self._line)

    async def take(self, look: SlotLook, *, waiting: Callable[[], None]) -> None:
        """Wait in line until ``look`` takes a slot. ``waiting`` is called once, when the
        first look (or the line) makes the job wait. Whatever ``look`` raises ends the
        wait and is raised here; the job leaves the line either way."""
        turn = asyncio.Event()
        self._line.append(turn)
        if self._line[0] is turn:
            turn.set()
        told = False
        more_free = False
        try:
            while True:
                if turn.is_set():
                    turn.clear()
                    taken = await look()
                    if taken is not None:
                        # Another slot is free if this look saw one, or if one was freed
                        # while it ran (that wake-up was meant for the head: pass it on).
                        more_free = taken + 1 < self._slots or turn.is_set()
                        return
                if not told:
                    told = True
                    waiting()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(turn.wait(), self._poll_interval)
                if self._line[0] is turn:
                    turn.set()  # the head looks again after poll_interval anyway
        finally:
            head = self._line[0] is turn
            self._line.remove(turn)
            if head and self._line and more_free:
                self._line[0].set()  # another slot was free: the next one looks now

    def freed(self) -> None:
        """A slot was freed (here, or anywhere in the fleet): the head of the line looks."""
        if self._line:
            self._line[0].set()
