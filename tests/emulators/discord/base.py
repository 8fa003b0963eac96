"""What every part of the Discord emulator shares: its address, its token, and waiting.

Each part (:mod:`.world`, :mod:`.gateway`, :mod:`.cdn`, :mod:`.rest`, :mod:`.interactions`)
is a class adding its state and routes on top of the parts it builds on;
:class:`~tests.emulators.discord.DiscordEmulator` is all of them together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class EmulatorError(AssertionError):
    """The bot, or a test, used the emulator in a way Discord would not accept."""


class EmulatorBase:
    """The bot token it accepts, where it listens, and a condition to wait on."""

    def __init__(self, *, token: str) -> None:
        self.token = token
        self.reject_token = False  # 401 on REST, close code 4004 on the gateway
        self._port = 0
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()  # set by stop(): held requests end

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def media_origins(self) -> frozenset[str]:
        """Where the emulator serves attachment bytes (the bot's allowed media origins)."""
        return frozenset({self.base_url})

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/gateway"

    async def _notify(self) -> None:
        """Wake everyone in :meth:`wait_until`: something changed."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        """Wait until ``predicate()`` holds, checked after each change the emulator sees."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)
