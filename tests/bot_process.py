"""Run the real bot in its own process against the emulators (restart tests, benchmarks).

``python -m tests.bot_process`` reads the usual settings from the environment, plus
``DISCORD_API_BASE`` and ``DISCORD_GATEWAY_URL`` (the emulator, which also serves the
attachments), points discord.py there, then runs exactly what ``python -m bot`` runs.
Tests start it with :func:`start_bot_process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from bot.__main__ import main
from bot.logs import configure_logging
from bot.settings import load_settings
from tests.emulators.discord import point_discord_at

ROOT = Path(__file__).resolve().parents[1]


def run() -> None:
    settings = load_settings(dotenv=False)
    api_base = os.environ["DISCORD_API_BASE"]
    point_discord_at(api_base, os.environ["DISCORD_GATEWAY_URL"])
    media_origin = api_base.split("/api/", 1)[0]
    configure_logging(
        settings.log_level, (settings.discord_token.get(), settings.onemin_api_key.get())
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            main(settings, media_origins=frozenset({media_origin}), guild_ready_timeout=0.05)
        )


def start_bot_process(env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start the bot process with ``env`` (added to PATH only), logging to ``log_path``."""
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env}
    log_file = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bot_process"],
        env=full_env,
        cwd=ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    run()
