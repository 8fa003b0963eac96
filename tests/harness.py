"""The end-to-end harness: both emulators, the real bot, and the guards.

``running_bot`` starts the Discord and 1min.ai emulators on 127.0.0.1, builds the bot with
the same factory and services as ``python -m bot`` (settings pointing at the emulators, a
temporary database and spool, short clocks: :data:`tests.support.timings.SHORT_TIMINGS`
unless the test passes ``timings=``), waits until it is ready, and on exit stops everything and
checks the guards: nothing logged at ERROR, no call to an endpoint the emulator lacks, and
the bot's client did not crash (discord.py lets an exception in its gateway loop end the
client without logging anything).
Benchmarks use it too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bot.app.metrics_http import MetricsEndpoint
from bot.app.services import Services, open_services
from bot.app.settings import Secret, Settings
from bot.frontend.build import DEFAULT_EXTENSIONS, create_bot
from bot.frontend.client import UpscaleBot
from tests.emulators.discord import DiscordEmulator, Injected, point_discord_at
from tests.emulators.onemin import OneMinEmulator
from tests.support.timings import SHORT_TIMINGS

# Distinctive, not token-shaped: tests assert they never leak.
DISCORD_TOKEN = "e2e-discord-token-QX7w-never-shown"
ONEMIN_KEY = "e2e-onemin-key-ZP4k-never-shown"
READY_TIMEOUT = 10.0  # seconds


class GuardError(AssertionError):
    """A guard caught the bot doing something a test must not let pass."""


class ErrorLogGuard(logging.Handler):
    """Collects every record at ERROR or above, from any logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def check(self) -> None:
        if self.records:
            formatter = logging.Formatter("%(name)s: %(message)s")
            text = "\n".join(formatter.format(r) for r in self.records)
            raise GuardError(f"the bot logged at ERROR:\n{text}")


class AllLogs(logging.Handler):
    """Keeps every formatted log line (for the secrets test)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def check_unimplemented(discord_emu: DiscordEmulator) -> None:
    if discord_emu.unimplemented:
        raise GuardError(
            f"the bot called endpoints the emulator lacks: {discord_emu.unimplemented}"
        )


async def client_crash(runner: asyncio.Task[None]) -> Exception | None:
    """The exception the bot's client task died of (discord.py logs none), or None."""
    try:
        await runner
    except asyncio.CancelledError:
        return None
    except Exception as exc:
        return exc
    return None


@dataclass
class Harness:
    bot: UpscaleBot
    discord: DiscordEmulator
    onemin: OneMinEmulator
    services: Services
    settings: Settings
    logs: AllLogs
    client_task: asyncio.Task[None] | None = None  # bot.start(); done only if it crashed

    async def upscale(
        self,
        data: bytes,
        filename: str = "cat.png",
        fmt: str | None = None,
        *,
        timeout: float = 20.0,
        **kw: Any,
    ) -> tuple[Injected, dict[str, Any]]:
        """Run /upscale with ``data`` and wait for the final answer."""
        options: dict[str, Any] = {"image": self.discord.attachment(data, filename)}
        if fmt is not None:
            options["format"] = fmt
        it = await self.discord.slash("upscale", options, **kw)
        return it, await it.final(timeout=timeout)

    async def balance(
        self, member_id: int, role_ids: Sequence[int] = (), *, settled: bool = True
    ) -> tuple[int, int]:
        """(used, pending) credits; by default after every job has settled.

        A result is posted before its credit is committed (in the same transaction that
        marks the job delivered), so a test that saw the result waits for the settlement.
        """
        if settled:
            await self.idle()
        b = await self.services.ledger.balance(self.discord.guild.id, member_id, role_ids)
        return b.used, b.pending

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until no job is queued, being prepared or running."""
        queue = self.services.queue
        async with asyncio.timeout(timeout):
            while not await queue.idle():  # noqa: ASYNC110
                await asyncio.sleep(0.02)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (for state outside the emulators' notifications)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running_bot(
    tmp_path: Path,
    *,
    extensions: Sequence[str] | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """Start both emulators and the real bot; check the guards on the way out."""
    guard = ErrorLogGuard()
    logs = AllLogs()
    root = logging.getLogger()
    root.addHandler(guard)
    root.addHandler(logs)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        async with (
            DiscordEmulator(token=DISCORD_TOKEN) as discord_emu,
            OneMinEmulator(api_key=ONEMIN_KEY) as onemin_emu,
            aiohttp.ClientSession() as session,
        ):
            settings = Settings(
                discord_token=Secret(DISCORD_TOKEN),
                onemin_api_key=Secret(ONEMIN_KEY),
                onemin_api_base=onemin_emu.base_url,
                database_url=Secret(f"sqlite:///{tmp_path / 'data' / 'upscaler.db'}"),
                spool_dir=tmp_path / "data" / "spool",
                timings=SHORT_TIMINGS,
            )
            settings = dataclasses.replace(settings, **overrides)
            point_discord_at(discord_emu)
            async with open_services(settings, session) as services:
                bot = create_bot(
                    settings,
                    session=session,
                    services=services,
                    media_origins=discord_emu.media_origins,
                    extensions=DEFAULT_EXTENSIONS if extensions is None else extensions,
                    guild_ready_timeout=0.05,
                )
                ready = asyncio.Event()

                async def on_ready() -> None:
                    ready.set()

                bot.add_listener(on_ready, "on_ready")
                # metrics_port=... serves /metrics, /healthz and /readyz as python -m bot does
                endpoint = MetricsEndpoint.for_settings(settings, services, bot.gateway_status)
                if endpoint is not None:
                    await endpoint.start()
                runner = asyncio.create_task(bot.start(DISCORD_TOKEN))
                try:
                    async with asyncio.timeout(READY_TIMEOUT):
                        waiter = asyncio.create_task(ready.wait())
                        done, _ = await asyncio.wait(
                            {waiter, runner}, return_when=asyncio.FIRST_COMPLETED
                        )
                        if runner in done:
                            waiter.cancel()
                            runner.result()
                            raise GuardError("the bot stopped before it was ready")
                    yield Harness(bot, discord_emu, onemin_emu, services, settings, logs, runner)
                finally:
                    await bot.close()
                    if endpoint is not None:
                        await endpoint.stop()
                    crash = await client_crash(runner)
                    if crash is not None:
                        trace = "".join(traceback.format_exception(crash))
                        raise GuardError(f"the bot's client crashed:\n{trace}")
            check_unimplemented(discord_emu)
        guard.check()
    finally:
        root.removeHandler(guard)
        root.removeHandler(logs)
        root.setLevel(old_level)
