"""The Discord emulator's channel posts with ``nonce`` and ``enforce_nonce``: a repeat in
the window answers the earlier message and posts nothing (no bot involved; plain HTTP, and
discord.py's ``send`` where the point is what discord.py sends)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest

from tests.emulators.discord import DiscordEmulator, point_discord_at
from tests.support.discord_rest import bot_session, post_message


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        yield emulator


@pytest.fixture
async def session(emu: DiscordEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with bot_session(emu) as client:
        yield client


post = post_message


JOB_7 = {"nonce": "job-7", "enforce_nonce": True}


def contents(emu: DiscordEmulator) -> list[str]:
    return [m["content"] for m in emu.channel_messages()]


async def test_a_repeat_with_enforce_nonce_answers_the_first_message(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """Same author, same nonce, enforce_nonce: the answer is the first message (its id and
    content) and the channel still holds one message."""
    first = await post(emu, session, {"content": "job 7 done", **JOB_7})
    again = await post(emu, session, {"content": "retry", **JOB_7})
    assert first[0] == again[0] == 200
    assert again[1]["id"] == first[1]["id"] and again[1]["content"] == "job 7 done"
    assert contents(emu) == ["job 7 done"]


async def test_without_enforce_nonce_the_nonce_does_not_dedupe(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """A nonce alone is only echoed: the same nonce twice posts twice."""
    first = await post(emu, session, {"content": "one", "nonce": "n-1"})
    second = await post(emu, session, {"content": "two", "nonce": "n-1"})
    assert first[1]["id"] != second[1]["id"]
    assert contents(emu) == ["one", "two"]


async def test_another_nonce_posts_a_new_message(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """enforce_nonce dedupes on the nonce only: a different nonce is a different post."""
    await post(emu, session, {"content": "job 1", "nonce": "job-1", "enforce_nonce": True})
    await post(emu, session, {"content": "job 2", "nonce": "job-2", "enforce_nonce": True})
    assert contents(emu) == ["job 1", "job 2"]


async def test_a_repeat_after_the_window_posts_again(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """The dedupe lasts nonce_window seconds (5 minutes by default); past it, a post."""
    emu.nonce_window = 0.0
    await post(emu, session, {"content": "first", "nonce": "job-3", "enforce_nonce": True})
    await post(emu, session, {"content": "later", "nonce": "job-3", "enforce_nonce": True})
    assert contents(emu) == ["first", "later"]


async def test_a_repeat_finds_the_latest_post_with_that_nonce(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """When a nonce was posted again (without enforce_nonce), a repeat with enforce_nonce
    answers the later post."""
    await post(emu, session, {"content": "first", "nonce": "job-5"})
    _, later = await post(emu, session, {"content": "second", "nonce": "job-5"})
    _, again = await post(
        emu, session, {"content": "third", "nonce": "job-5", "enforce_nonce": True}
    )
    assert again["id"] == later["id"]
    assert contents(emu) == ["first", "second"]


async def test_a_repeat_after_the_first_was_deleted_is_unknown_message(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """As Discord does (discord-api-docs PR 6647): the deleted message is not posted again;
    the repeat answers 404 code 10008."""
    _, first = await post(
        emu, session, {"content": "gone", "nonce": "job-4", "enforce_nonce": True}
    )
    url = f"{emu.api_base}/channels/{emu.channel.id}/messages/{first['id']}"
    async with session.delete(url) as deleted:
        assert deleted.status == 204
    again = await post(emu, session, {"content": "again", "nonce": "job-4", "enforce_nonce": True})
    assert again == (404, {"message": "Unknown Message", "code": 10008})
    assert contents(emu) == []


async def test_the_nonce_comes_back_as_sent_but_not_from_history(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """The answer echoes the nonce with its JSON type (string or integer); GET and history
    do not carry it, as Discord does not keep it."""
    _, text = await post(emu, session, {"content": "a", "nonce": "12345"})
    _, number = await post(emu, session, {"content": "b", "nonce": 12345})
    assert (text["nonce"], number["nonce"]) == ("12345", 12345)
    url = f"{emu.api_base}/channels/{emu.channel.id}/messages"
    async with session.get(url) as history, session.get(f"{url}/{text['id']}") as one:
        assert all("nonce" not in m for m in await history.json())
        assert "nonce" not in await one.json()


async def test_discord_py_send_with_the_same_nonce_returns_the_same_message(
    emu: DiscordEmulator,
) -> None:
    """discord.py's send(nonce=...) sends the nonce with enforce_nonce; a retry of the same
    post gives back the first message (same id), and the channel holds one."""
    point_discord_at(emu)
    client = discord.Client(intents=discord.Intents.none())
    await client.login(emu.token)
    try:
        channel = client.get_partial_messageable(emu.channel.id)
        first = await channel.send("job 9 done", nonce="job-9")
        retry = await channel.send("job 9 done", nonce="job-9")
    finally:
        await client.close()
    assert retry.id == first.id and first.nonce == "job-9"
    posts = [c.json for c in emu.calls if c.method == "POST"]
    assert [(p["nonce"], p["enforce_nonce"]) for p in posts] == [("job-9", True)] * 2
    assert contents(emu) == ["job 9 done"]
