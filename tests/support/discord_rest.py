"""Talking to the Discord emulator's REST routes as a bot would, for the emulator's tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.emulators.discord import DiscordEmulator


@contextlib.asynccontextmanager
async def bot_session(emu: DiscordEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session that sends the bot's token, as discord.py does."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {emu.token}"}) as session:
        yield session


async def post_message(
    emu: DiscordEmulator, session: aiohttp.ClientSession, body: dict[str, Any]
) -> tuple[int, Any]:
    """``POST /channels/{id}/messages`` in the emulator's channel: the status and answer."""
    url = f"{emu.api_base}/channels/{emu.channel.id}/messages"
    async with session.post(url, json=body) as response:
        return response.status, await response.json()
