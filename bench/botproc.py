"""The bot as its own process for benchmarks, with the emulators outside it.

:func:`bot_process` starts ``python -m tests.bot_process`` (what ``python -m bot`` runs)
on a SQLite database in a directory of the caller's, against the Discord emulator in the
caller's process and the 1min.ai emulator in a process of its own
(:func:`bench.common.onemin_in_subprocess`), so that neither emulator's work is counted
with the bot's: its CPU time (:class:`bench.common.TreeCpu`), memory
(:class:`bench.common.TreeRss`) and event-loop lag are the bot's alone.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import onemin_in_subprocess
from tests.bot_process import start_bot_process
from tests.emulators.discord import DiscordEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY

START_TIMEOUT = 60.0  # seconds for the bot process to connect and sync its commands
STOP_TIMEOUT = 30.0  # seconds for the bot process to stop after SIGTERM


@dataclass
class BotProcess:
    """A running bot process and the Discord emulator it talks to."""

    proc: subprocess.Popen[bytes]
    discord: DiscordEmulator
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an owner would (the bot then finishes cleanly), then wait."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)


@asynccontextmanager
async def bot_process(
    tmp: Path, env: Mapping[str, str] | None = None, *, upscale_delay: float = 0.0
) -> AsyncIterator[BotProcess]:
    """Both emulators and the bot in its own process, connected and with its commands
    synced. ``env`` adds settings (e.g. ``MAX_CONCURRENT_JOBS``); 1min.ai answers every
    upscale after ``upscale_delay`` s. On exit the bot is stopped with SIGTERM, and its
    log is checked: an ERROR or a traceback fails the benchmark."""
    log_path = tmp / "bot.log"
    with onemin_in_subprocess(ONEMIN_KEY, upscale_delay) as base_url:
        async with DiscordEmulator(token=DISCORD_TOKEN) as discord_emu:
            full_env = {
                "DISCORD_TOKEN": DISCORD_TOKEN,
                "ONEMIN_API_KEY": ONEMIN_KEY,
                "ONEMIN_API_BASE": base_url,
                "DATABASE_URL": f"sqlite:///{tmp / 'data' / 'bot.db'}",
                "DISCORD_API_BASE": discord_emu.api_base,
                "DISCORD_GATEWAY_URL": discord_emu.gateway_url,
                "LOG_LEVEL": "WARNING",
                **(env or {}),
            }
            proc = start_bot_process(full_env, log_path)
            bot = BotProcess(proc, discord_emu, log_path)
            try:
                await discord_emu.wait_until(
                    lambda: bool(discord_emu.global_commands) or proc.poll() is not None,
                    START_TIMEOUT,
                )
                if proc.poll() is not None:
                    raise AssertionError(f"the bot did not start:\n{bot.log()}")
                await discord_emu.wait_connected()
                yield bot
            finally:
                await stop(proc)
    log = bot.log()
    if "ERROR" in log or "Traceback" in log:
        raise AssertionError(f"the bot logged errors:\n{log}")
