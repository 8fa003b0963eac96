"""A gate the emulators hold requests at until the test releases them.

A test that must catch the bot in the middle of a call (an upscale running, an
attachment downloading) holds the call instead of guessing a delay long enough::

    hold = onemin_emu.hold("upscale")
    ...  # start a job
    await hold.reached()  # the bot's call is in flight now, and stays there
    ...  # kill the bot, press Cancel, look at the job's stage
    hold.release()  # this and every later call go through

Nothing is slower than it needs to be, and nothing depends on how loaded the machine is.
"""

from __future__ import annotations

import asyncio


class Hold:
    """Requests that reach it wait until :meth:`release` (or until the emulator stops).

    With ``times``, only that many requests are held; later ones go straight through.
    """

    def __init__(self, times: int | None = None) -> None:
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        self.times = times
        self.arrived = 0  # requests that reached it (with ``times``: those it held)
        self.waiting = 0  # requests waiting at it now
        self._released = asyncio.Event()
        self._changed = asyncio.Condition()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def release(self) -> None:
        """Let every waiting request, and every later one, through."""
        self._released.set()

    async def reached(self, count: int = 1, timeout: float = 15.0) -> None:
        """Wait until ``count`` requests have reached the hold."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.arrived >= count)

    async def passage(self, stopping: asyncio.Event) -> bool:
        """Called by the emulator for each request: wait for the release.

        Returns False when the emulator stopped first (the request should then end
        without an answer).
        """
        if self.times is not None and self.arrived >= self.times:
            return True  # held enough: this one goes straight through
        async with self._changed:
            self.arrived += 1
            self._changed.notify_all()
        if self._released.is_set():
            return True
        self.waiting += 1
        released = asyncio.ensure_future(self._released.wait())
        stopped = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({released, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiting -= 1
            released.cancel()
            stopped.cancel()
        return self._released.is_set()
