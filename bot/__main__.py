"""``python -m bot``: read the settings, open shared resources, run the bot until stopped.

A missing or malformed setting prints one line naming the variable and exits with
status 2 before anything connects. SIGINT and SIGTERM close the bot, then the HTTP
session and the database, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from typing import Any

import aiohttp

from bot.client import UpscaleBot, create_bot
from bot.logs import configure_logging
from bot.services import open_services
from bot.settings import Settings, SettingsError, load_settings

log = logging.getLogger("bot")

EXIT_CONFIG = 2
# Whole-request ceiling for the shared session; calls that need less set their own.
SESSION_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15)


async def main(settings: Settings, **bot_options: Any) -> None:
    """Open the session, build the bot, run it until a signal or a fatal error.

    ``bot_options`` go to :func:`create_bot` (the test process passes the emulator's media
    origin and a short guild_ready_timeout).
    """
    connector = aiohttp.TCPConnector(limit=32, ttl_dns_cache=300)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=SESSION_TIMEOUT) as session,
        open_services(settings, session) as services,
    ):
        bot = create_bot(settings, session=session, services=services, **bot_options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, functools.partial(_request_stop, bot, sig))
        async with bot:
            await bot.start(settings.discord_token.get())
    log.info("Stopped cleanly")


def _request_stop(bot: UpscaleBot, sig: signal.Signals) -> None:
    log.info("Received %s; shutting down", sig.name)
    task = asyncio.get_running_loop().create_task(bot.close())
    _stopping.add(task)
    task.add_done_callback(_stopping.discard)


_stopping: set[asyncio.Task[None]] = set()


def run() -> None:
    """Console entry point (``upscale-bot``)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    configure_logging(
        settings.log_level,
        secrets=(settings.discord_token.get(), settings.onemin_api_key.get()),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(settings))


if __name__ == "__main__":
    run()
