"""The Discord emulator's faults that take effect before they answer: a post Discord made
whose answer the bot never saw (no bot involved; plain HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.emulators.discord import DiscordEmulator
from tests.support.discord_rest import bot_session, post_message

CHANNEL_MESSAGES = r"/channels/\d+/messages$"
SERVER_ERROR = {"message": "Internal Server Error", "code": 0}


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        yield emulator


@pytest.fixture
async def session(emu: DiscordEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with bot_session(emu) as client:
        yield client


post = post_message


def contents(emu: DiscordEmulator) -> list[str]:
    return [m["content"] for m in emu.channel_messages()]


async def test_an_applied_500_posts_the_message_and_answers_500(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """applied=True: the message is in the channel, but the answer is the fault's 500, and
    the call is recorded with the status the client saw."""
    emu.fail(CHANNEL_MESSAGES, 500, method="POST", applied=True)
    assert await post(emu, session, {"content": "made"}) == (500, SERVER_ERROR)
    assert contents(emu) == ["made"]
    assert [c.status for c in emu.calls] == [500]


async def test_a_retry_with_the_nonce_after_an_applied_500_answers_the_message(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """What a client's retry after that 500 gets, with enforce_nonce: the message Discord
    made, and no second one."""
    emu.fail(CHANNEL_MESSAGES, 500, method="POST", applied=True)
    body = {"content": "result", "nonce": "r-job", "enforce_nonce": True}
    assert (await post(emu, session, body))[0] == 500
    status, again = await post(emu, session, body)
    assert status == 200 and again["content"] == "result"
    assert [m["id"] for m in emu.channel_messages()] == [again["id"]]


async def test_a_500_not_applied_posts_nothing(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """Without applied, the fault answers before the route: nothing is posted."""
    emu.fail(CHANNEL_MESSAGES, 500, method="POST")
    assert await post(emu, session, {"content": "lost"}) == (500, SERVER_ERROR)
    assert contents(emu) == []
