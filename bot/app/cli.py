"""``python -m bot``: read the settings, open shared resources, run the bot until stopped.

A missing or malformed setting prints one line naming the variable and exits with
status 2 before anything connects. Other start-up problems (a rejected token, no network,
a database that cannot be opened, a 1min.ai host that does not resolve) print one line
and exit with the status documented in :mod:`bot.app.startup`. SIGINT and SIGTERM close the
bot, then the HTTP session and the database, in that order.

With ``METRICS_PORT`` set, ``/metrics``, ``/healthz`` and ``/readyz`` are served from
before the bot connects to Discord until after it has closed (:mod:`bot.app.metrics_http`).

``python -m bot check`` (``upscale-bot check``) checks the configuration, the token, the
database and both services without starting the bot (:mod:`bot.app.check`).
``upscale-bot job <id>`` prints a job's trail: its stages with their times and the
process that ran each, its outcome, credits and 1min.ai record (:mod:`bot.app.trail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import aiohttp

from bot.app import startup
from bot.app.metrics_http import MetricsEndpoint, MetricsPortUnavailable
from bot.app.services import open_services
from bot.app.settings import Settings, SettingsError, load_settings
from bot.app.startup import EXIT_CONFIG, EXIT_METRICS_PORT, StartupError
from bot.app.trail import show_job
from bot.frontend.build import create_bot
from bot.frontend.client import UpscaleBot
from bot.images import heap
from bot.logs import configure_logging

log = logging.getLogger("bot")

USAGE = "usage: upscale-bot [check | job <id>]"
# Whole-request ceiling for the shared session; calls that need less set their own.
SESSION_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15)


async def main(settings: Settings, **bot_options: Any) -> None:
    """Open the session, build the bot, run it until a signal or a fatal error.

    ``bot_options`` go to :func:`create_bot` (the test process passes the emulator's media
    origin and a short guild_ready_timeout). Start-up problems an owner can fix raise
    :class:`~bot.app.startup.StartupError`: the database first, then the 1min.ai host lookup
    and the Discord login, both waiting up to ``STARTUP_RETRY_SECONDS`` for the network.
    """
    heap.map_large_blocks()  # large buffers go back to the OS once freed (see bot.images.heap)
    retry = startup.RetryPolicy.for_settings(settings)
    startup.quiet_voice_warnings()
    token = settings.discord_token.get()
    connector = aiohttp.TCPConnector(limit=32, ttl_dns_cache=300)
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=connector, timeout=SESSION_TIMEOUT)
        )
        services = await startup.open_database_or_exit(
            settings,
            lambda: stack.enter_async_context(open_services(settings, session)),
            retry,
        )
        startup.prepare_spool(settings)
        await startup.resolve_onemin(settings.onemin_api_base, retry)
        await startup.wait_for_discord(token, retry)
        bot = create_bot(settings, session=session, services=services, **bot_options)
        endpoint = MetricsEndpoint.for_settings(settings, services, bot.gateway_status)
        if endpoint is not None:
            try:
                await stack.enter_async_context(endpoint)
            except MetricsPortUnavailable as exc:
                raise StartupError(EXIT_METRICS_PORT, str(exc)) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, functools.partial(_request_stop, bot, sig))
        async with bot:
            with startup.discord_errors():
                await bot.start(token)
    log.info("Stopped cleanly")


def _request_stop(bot: UpscaleBot, sig: signal.Signals) -> None:
    log.info("Received %s; shutting down", sig.name)
    task = asyncio.get_running_loop().create_task(bot.close())
    _stopping.add(task)
    task.add_done_callback(_stopping.discard)


_stopping: set[asyncio.Task[None]] = set()


def serve(settings: Settings, **bot_options: Any) -> None:
    """Run :func:`main` until stopped; a start-up problem prints one line and exits."""
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main(settings, **bot_options))
    except StartupError as exc:
        print(exc, file=sys.stderr)
        sys.exit(exc.status)


def load_or_exit(load: Callable[[], Settings] = load_settings) -> Settings:
    """The settings ``load`` reads; a missing or malformed one prints one line naming it
    and exits with status 2 (:data:`~bot.app.startup.EXIT_CONFIG`)."""
    try:
        return load()
    except SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def run_job(shown_id: str) -> int:
    """``upscale-bot job <id>``: the job's trail from the database (see bot.app.trail)."""
    settings = load_or_exit()
    configure_logging("WARNING", secrets=settings.secret_values())
    return asyncio.run(show_job(settings, shown_id, sys.stdout))


def run() -> None:
    """Console entry point (``upscale-bot``, ``upscale-bot check``, ``upscale-bot job``)."""
    args = sys.argv[1:]
    if args == ["check"]:
        from bot.app.check import run_check

        sys.exit(run_check(load_settings))
    if len(args) == 2 and args[0] == "job":
        sys.exit(run_job(args[1]))
    if args:
        print(USAGE, file=sys.stderr)
        sys.exit(0 if args[0] in ("-h", "--help") else EXIT_CONFIG)
    settings = load_or_exit()
    configure_logging(
        settings.log_level,
        secrets=settings.secret_values(),
    )
    serve(settings)


if __name__ == "__main__":
    run()
