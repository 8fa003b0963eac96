"""The Discord emulator's interaction responses as channel messages: what they carry, and
editing or deleting them with the bot token once the interaction token is dead
(docs/interaction-tokens.md); and the channel routes' rules on others' messages (no bot
involved; plain HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.emulators.discord import (
    MANAGE_MESSAGES,
    DiscordEmulator,
    Injected,
    snowflake,
)
from tests.support.discord_rest import bot_session


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        emulator.global_commands = [
            {"id": str(snowflake()), "name": "ping", "type": 1, "description": "", "options": []}
        ]
        yield emulator


@pytest.fixture
async def session(emu: DiscordEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with bot_session(emu) as client:
        yield client


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as response:
        return response.status, await response.json() if response.status != 204 else None


async def replied(
    emu: DiscordEmulator, session: aiohttp.ClientSession, flags: int = 0
) -> tuple[Injected, dict[str, Any]]:
    """A /ping answered with a message (ephemeral with flags=64); it and that message."""
    it = await emu.slash("ping")
    url = f"{emu.api_base}/interactions/{it.id}/{it.token}/callback?with_response=true"
    body = {"type": 4, "data": {"content": "pong", "flags": flags}}
    status, answer = await call(session, "POST", url, body)
    assert status == 200
    return it, answer["resource"]["message"]


def channel_message_url(emu: DiscordEmulator, message_id: str | int) -> str:
    return f"{emu.api_base}/channels/{emu.channel.id}/messages/{message_id}"


async def test_a_response_is_the_bots_message_sent_by_the_applications_webhook(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """Type 20, webhook_id and application_id the application's, author the bot user, and
    interaction_metadata naming the interaction and its user; the same through GET."""
    it, message = await replied(emu, session)
    _, fetched = await call(session, "GET", channel_message_url(emu, message["id"]))
    for shown in (message, fetched):
        assert shown["type"] == 20
        assert shown["webhook_id"] == shown["application_id"] == str(emu.application_id)
        assert shown["author"]["id"] == str(emu.bot_user.id)
        meta = shown["interaction_metadata"]
        assert (meta["id"], meta["type"], meta["user"]["id"]) == (str(it.id), 2, str(it.user.id))


async def test_the_bot_token_edits_a_response_whose_interaction_token_is_dead(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """PATCH /channels/{id}/messages/{id} with the bot token works on a non-ephemeral
    response after its token died; the Injected shows the edit."""
    it, message = await replied(emu, session)
    emu.kill_token(it)
    status, edited = await call(
        session, "PATCH", channel_message_url(emu, message["id"]), {"content": "late result"}
    )
    assert (status, edited["content"], edited["id"]) == (200, "late result", message["id"])
    assert it.original is not None and it.original["content"] == "late result"
    assert [e["content"] for e in it.edits] == ["pong", "late result"]


async def test_the_bot_token_deletes_a_response_whose_interaction_token_is_dead(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """DELETE with the bot token removes the response; the Injected marks it deleted."""
    it, message = await replied(emu, session)
    emu.kill_token(it)
    assert (await call(session, "DELETE", channel_message_url(emu, message["id"])))[0] == 204
    assert it.deleted and emu.channel_messages() == []


async def test_a_response_deleted_by_the_bot_token_is_unknown_to_its_webhook(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """With the token still alive, @original of a response deleted through the channel
    answers 404 code 10008, as Discord does."""
    it, message = await replied(emu, session)
    await call(session, "DELETE", channel_message_url(emu, message["id"]))
    url = f"{emu.api_base}/webhooks/{emu.application_id}/{it.token}/messages/@original"
    assert await call(session, "PATCH", url, {"content": "x"}) == (
        404,
        {"message": "Unknown Message", "code": 10008},
    )


async def test_an_ephemeral_response_is_not_a_channel_message(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """Ephemeral responses exist only through the interaction token: the channel routes
    answer 404 code 10008."""
    _, message = await replied(emu, session, flags=64)
    url = channel_message_url(emu, message["id"])
    for method, body in (("GET", None), ("PATCH", {"content": "x"}), ("DELETE", None)):
        assert await call(session, method, url, body) == (
            404,
            {"message": "Unknown Message", "code": 10008},
        )


async def test_the_bot_cannot_edit_a_members_message(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """403 code 50005, and the message is unchanged."""
    theirs = emu.user_message(content="mine")
    status, body = await call(session, "PATCH", channel_message_url(emu, theirs["id"]), {})
    assert (status, body["code"]) == (403, 50005)
    assert emu.channel_messages()[0]["content"] == "mine"


async def test_deleting_a_members_message_needs_manage_messages(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """Without Manage Messages 403 code 50013; with it the message goes."""
    theirs = emu.user_message(content="spam")
    url = channel_message_url(emu, theirs["id"])
    status, body = await call(session, "DELETE", url)
    assert (status, body["code"]) == (403, 50013)
    emu.channel.bot_permissions |= MANAGE_MESSAGES
    assert (await call(session, "DELETE", url))[0] == 204
    assert emu.channel_messages() == []
