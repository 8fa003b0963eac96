"""The Discord emulator's channel history, ``GET /channels/{id}/messages``, as Discord
answers it, and filling a channel with many members' messages at once (no bot involved;
plain HTTP, and discord.py's ``history`` for its pagination)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest

from tests.emulators.discord import (
    HISTORY_DEFAULT_LIMIT,
    DiscordEmulator,
    point_discord_at,
    snowflake,
)
from tests.support.discord_rest import bot_session


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        yield emulator


@pytest.fixture
async def session(emu: DiscordEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with bot_session(emu) as client:
        yield client


async def history(
    emu: DiscordEmulator, session: aiohttp.ClientSession, **query: str | int
) -> tuple[int, Any]:
    url = f"{emu.api_base}/channels/{emu.channel.id}/messages"
    params = {k: str(v) for k, v in query.items()}
    async with session.get(url, params=params) as response:
        return response.status, await response.json()


def ns(page: list[dict[str, Any]]) -> list[int]:
    """The index each message of a page was filled with ("message {n}")."""
    return [int(m["content"].split()[-1]) for m in page]


async def test_without_a_query_the_50_newest_come_newest_first(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    emu.fill_channel(60)
    status, page = await history(emu, session)
    assert status == 200
    assert ns(page) == list(range(59, 59 - HISTORY_DEFAULT_LIMIT, -1))


async def test_before_gives_the_newest_messages_older_than_it(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    filled = emu.fill_channel(20)
    _, page = await history(emu, session, before=filled[10]["id"], limit=3)
    assert ns(page) == [9, 8, 7]


async def test_after_gives_the_oldest_messages_newer_than_it_newest_first(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """The messages right after the id, not the channel's newest: [13, 12, 11] after 10."""
    filled = emu.fill_channel(20)
    _, page = await history(emu, session, after=filled[10]["id"], limit=3)
    assert ns(page) == [13, 12, 11]


async def test_around_gives_the_message_and_half_the_limit_on_each_side(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    filled = emu.fill_channel(20)
    _, page = await history(emu, session, around=filled[10]["id"], limit=4)
    assert ns(page) == [12, 11, 10, 9, 8]


@pytest.mark.parametrize(
    ("limit", "code"),
    [(0, "NUMBER_TYPE_MIN"), (101, "NUMBER_TYPE_MAX"), ("many", "NUMBER_TYPE_COERCE")],
)
async def test_a_limit_outside_1_to_100_is_invalid_form_body(
    emu: DiscordEmulator, session: aiohttp.ClientSession, limit: int | str, code: str
) -> None:
    status, body = await history(emu, session, limit=limit)
    assert (status, body["code"], body["message"]) == (400, 50035, "Invalid Form Body")
    assert body["errors"]["limit"]["_errors"][0]["code"] == code


async def test_two_anchors_together_are_refused_and_recorded(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """before, after and around are mutually exclusive: 400, and a spec violation (cleared
    here, or leaving the emulator would fail the test)."""
    filled = emu.fill_channel(5)
    status, _ = await history(emu, session, before=filled[4]["id"], after=filled[0]["id"])
    assert status == 400
    assert len(emu.spec_violations) == 1 and "mutually exclusive" in emu.spec_violations[0]
    emu.spec_violations.clear()


def test_fill_channel_posts_other_members_messages_in_order_without_http(
    emu: DiscordEmulator,
) -> None:
    """Thousands of messages, authors in turn (the guild's humans), ids increasing, and no
    REST call made."""
    start = snowflake()
    filled = emu.fill_channel(3000)
    ids = [int(m["id"]) for m in filled]
    assert ids == sorted(ids) and ids[0] > start and len(set(ids)) == 3000
    humans = [m.user.id for m in emu.guild.humans]
    assert [int(m["author"]["id"]) for m in filled[:8]] == (humans * 2)[:8]
    assert emu.channel_messages() == filled and emu.calls == []


async def test_discord_py_reads_ten_pages_of_100_after_a_snowflake_in_order(
    emu: DiscordEmulator,
) -> None:
    """A bot reading history(after=<snowflake from a job's start>, oldest_first=True) in
    pages of 100 sees every later message exactly once, oldest first, in 10 requests, and
    none of the messages from before the snowflake."""
    point_discord_at(emu)
    emu.fill_channel(30, content="before {n}")
    start = snowflake()
    later = emu.fill_channel(1000)
    client = discord.Client(intents=discord.Intents.none())
    await client.login(emu.token)
    try:
        channel = client.get_partial_messageable(emu.channel.id)
        seen = [
            m.id
            async for m in channel.history(
                after=discord.Object(start), limit=1000, oldest_first=True
            )
        ]
    finally:
        await client.close()
    assert seen == [int(m["id"]) for m in later]
    pages = [c for c in emu.calls if c.method == "GET" and c.path.endswith("/messages")]
    assert len(pages) == 10
