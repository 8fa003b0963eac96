"""The whole Discord emulator: every part together, served by aiohttp on 127.0.0.1."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import discord
import yarl
from aiohttp import web

from tests.emulators.discord.interactions import Interactions

MAX_REQUEST_BYTES = 256 * 1024 * 1024  # aiohttp refuses bodies over 1 MiB by default
SHUTDOWN_TIMEOUT = 0.5  # seconds stop() waits for handlers still running


class DiscordEmulator(Interactions):
    """The emulator (see the package docstring); an async context manager that serves it."""

    def __init__(self, *, token: str = "emulated-bot-token") -> None:
        super().__init__(token=token)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Serve on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[self._middleware])
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._rest)
        self._stopping.clear()
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the gateway connections and stop serving; held requests end."""
        self._stopping.set()
        await self.close_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop; then, unless the block already failed, fail on ``spec_violations``."""
        await self.stop()
        if exc_type is None:
            self.check_spec()


def point_discord_at(emulator: DiscordEmulator | str, gateway_url: str | None = None) -> None:
    """Send discord.py's REST and gateway traffic (process-wide) to the emulator.

    discord.py keeps both addresses in class attributes; tests set them here so the bot's
    own code has no branch for an emulator. Accepts an emulator or its two URLs.
    """
    if isinstance(emulator, str):
        api_base, gateway = emulator, gateway_url or ""
    else:
        api_base, gateway = emulator.api_base, emulator.gateway_url
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
