"""The Discord emulator's interaction tokens: their lifetime, killing one, and the record
of calls made with a token Discord already refused (no bot involved; plain HTTP, and
discord.py's webhook client where the point is what discord.py sees)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest

from tests.emulators.discord import (
    TOKEN_LIFETIME,
    DiscordEmulator,
    Injected,
    point_discord_at,
    snowflake,
)

INVALID_TOKEN = {"message": "Invalid Webhook Token", "code": 50027}


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        emulator.global_commands = [
            {"id": str(snowflake()), "name": "ping", "type": 1, "description": "", "options": []}
        ]
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as response:
        return response.status, await response.json() if response.status != 204 else None


def callback_url(emu: DiscordEmulator, it: Injected) -> str:
    return f"{emu.api_base}/interactions/{it.id}/{it.token}/callback?with_response=true"


def webhook_url(emu: DiscordEmulator, it: Injected, tail: str = "") -> str:
    return f"{emu.api_base}/webhooks/{emu.application_id}/{it.token}{tail}"


async def answered(emu: DiscordEmulator, session: aiohttp.ClientSession) -> Injected:
    """A /ping answered with a message, and one follow-up: every token route has a target."""
    it = await emu.slash("ping")
    reply = {"type": 4, "data": {"content": "pong"}}
    assert (await call(session, "POST", callback_url(emu, it), reply))[0] == 200
    status, _ = await call(session, "POST", webhook_url(emu, it, "?wait=true"), {"content": "f"})
    assert status == 200
    return it


async def test_a_token_past_its_15_minutes_is_refused_from_the_interactions_time(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """Counted from the interaction's snowflake time: an interaction created 15 minutes and
    a second ago cannot even be acknowledged (401 code 50027), a fresh one can."""
    old = await emu.slash("ping", age=TOKEN_LIFETIME + 1)
    fresh = await emu.slash("ping")
    reply = {"type": 5}
    assert await call(session, "POST", callback_url(emu, old), reply) == (401, INVALID_TOKEN)
    assert (await call(session, "POST", callback_url(emu, fresh), reply))[0] == 200
    assert old.ack_status == 401 and old.ack_type is None


async def test_every_route_with_a_dead_token_answers_invalid_webhook_token(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """After kill_token, the callback, @original and follow-up GET/PATCH/DELETE and the
    follow-up POST all answer 401 with Discord's JSON, and nothing changes."""
    it = await answered(emu, session)
    followup = it.followups[0]["id"]
    emu.kill_token(it)
    routes = [
        ("POST", callback_url(emu, it), {"type": 4, "data": {"content": "again"}}),
        ("GET", webhook_url(emu, it, "/messages/@original"), None),
        ("PATCH", webhook_url(emu, it, "/messages/@original"), {"content": "edited"}),
        ("DELETE", webhook_url(emu, it, "/messages/@original"), None),
        ("GET", webhook_url(emu, it, f"/messages/{followup}"), None),
        ("PATCH", webhook_url(emu, it, f"/messages/{followup}"), {"content": "edited"}),
        ("DELETE", webhook_url(emu, it, f"/messages/{followup}"), None),
        ("POST", webhook_url(emu, it, "?wait=true"), {"content": "another"}),
    ]
    for method, url, body in routes:
        assert await call(session, method, url, body) == (401, INVALID_TOKEN), (method, url)
    assert it.original is not None and it.original["content"] == "pong" and not it.deleted
    assert [m["content"] for m in emu.channel_messages()] == ["pong", "f"]


async def test_a_shorter_token_lifetime_emulates_clock_skew(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """token_lifetime = 20: a token is refused once its interaction is 20 s old, well inside
    the 15 minutes the bot counts on, and still works before that."""
    emu.token_lifetime = 20.0
    young = await emu.slash("ping", age=10)
    old = await emu.slash("ping", age=21)
    assert (await call(session, "POST", callback_url(emu, young), {"type": 5}))[0] == 200
    assert await call(session, "POST", callback_url(emu, old), {"type": 5}) == (
        401,
        INVALID_TOKEN,
    )
    assert emu.token_dead(old) and not emu.token_dead(young)


async def test_killing_one_token_leaves_the_others_working(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """kill_token is per interaction: another interaction's token still edits its reply."""
    first = await answered(emu, session)
    second = await answered(emu, session)
    emu.kill_token(first)
    url = webhook_url(emu, second, "/messages/@original")
    status, body = await call(session, "PATCH", url, {"content": "still alive"})
    assert (status, body["content"]) == (200, "still alive")
    assert second.original is not None and second.original["content"] == "still alive"


async def test_calls_after_a_tokens_first_refusal_are_recorded(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """dead_token_calls lists (method, path) of every call after each token's first 401,
    not the first one, and can be narrowed to one interaction."""
    first = await answered(emu, session)
    second = await answered(emu, session)
    emu.kill_token(first)
    emu.kill_token(second)
    first_edit = webhook_url(emu, first, "/messages/@original")
    await call(session, "PATCH", first_edit, {"content": "refused, and final"})
    assert emu.dead_token_calls() == []
    assert first.token_refused_at is not None and second.token_refused_at is None
    await call(session, "GET", first_edit)
    await call(session, "POST", webhook_url(emu, first, "?wait=true"), {"content": "x"})
    await call(session, "PATCH", webhook_url(emu, second, "/messages/@original"), {})
    path = f"/api/v10/webhooks/{emu.application_id}/{first.token}"
    assert emu.dead_token_calls() == [("GET", f"{path}/messages/@original"), ("POST", path)]
    assert emu.dead_token_calls(second) == []


async def test_discord_py_sees_a_dead_token_as_401_code_50027(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """Through discord.py's webhook client (what the bot's reply edits use) the refusal is
    an HTTPException with status 401 and code 50027."""
    point_discord_at(emu)
    it = await answered(emu, session)
    assert it.original is not None
    emu.kill_token(it)
    webhook = discord.Webhook.partial(emu.application_id, it.token, session=session)
    with pytest.raises(discord.HTTPException) as refused:
        await webhook.edit_message(int(it.original["id"]), content="too late")
    assert (refused.value.status, refused.value.code) == (401, 50027)
