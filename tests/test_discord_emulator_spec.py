"""The Discord emulator's check of request bodies against Discord's OpenAPI spec: a field
the spec does not know, or a wrong type, fails the test when the emulator stops (no bot
involved; plain HTTP, and discord.py for what it really sends)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest

from tests.emulators.discord import (
    DiscordEmulator,
    EmulatorError,
    Injected,
    point_discord_at,
    snowflake,
)
from tests.emulators.discord.spec import check_body
from tests.support.discord_rest import bot_session


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    """An emulator whose violations each test inspects and clears itself."""
    emulator = DiscordEmulator()
    await emulator.start()
    emulator.global_commands = [
        {"id": str(snowflake()), "name": "ping", "type": 1, "description": "", "options": []}
    ]
    yield emulator
    await emulator.stop()


@pytest.fixture
async def session(emu: DiscordEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with bot_session(emu) as client:
        yield client


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as response:
        return response.status, await response.json()


async def replied(emu: DiscordEmulator, session: aiohttp.ClientSession) -> Injected:
    it = await emu.slash("ping")
    url = f"{emu.api_base}/interactions/{it.id}/{it.token}/callback?with_response=true"
    assert (await call(session, "POST", url, {"type": 4, "data": {"content": "pong"}}))[0] == 200
    return it


def urls(emu: DiscordEmulator, it: Injected) -> dict[str, tuple[str, str]]:
    """Each checked route: (method, url) for an existing target."""
    assert it.original is not None
    channel = f"{emu.api_base}/channels/{emu.channel.id}/messages"
    webhook = f"{emu.api_base}/webhooks/{emu.application_id}/{it.token}"
    return {
        "create message": ("POST", channel),
        "edit message": ("PATCH", f"{channel}/{it.original['id']}"),
        "execute webhook": ("POST", f"{webhook}?wait=true"),
        "edit webhook message": ("PATCH", f"{webhook}/messages/@original"),
    }


@pytest.mark.parametrize(
    "route", ["create message", "edit message", "execute webhook", "edit webhook message"]
)
async def test_an_unknown_field_is_accepted_but_recorded(
    emu: DiscordEmulator, session: aiohttp.ClientSession, route: str
) -> None:
    """Like Discord, the emulator ignores a field it does not know (200), and lists it."""
    it = await replied(emu, session)
    method, url = urls(emu, it)[route]
    status, _ = await call(session, method, url, {"content": "x", "colour": "red"})
    assert status == 200
    assert len(emu.spec_violations) == 1
    assert f"{route}: field 'colour' is not in the spec" in emu.spec_violations[0]
    assert emu.spec_violations[0].startswith(f"{method} /api/v10/")
    emu.spec_violations.clear()


async def test_an_unknown_field_in_callback_data_is_recorded(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """A callback's data is checked against its type's schema: a nonce has no place there."""
    it = await emu.slash("ping")
    url = f"{emu.api_base}/interactions/{it.id}/{it.token}/callback"
    await call(session, "POST", url, {"type": 4, "data": {"content": "x", "nonce": "1"}})
    assert [v.split(": ", 1)[1] for v in emu.spec_violations] == [
        "callback data 4/5: field 'nonce' is not in the spec"
    ]
    emu.spec_violations.clear()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nonce", "n" * 26),
        ("nonce", 2**63),
        ("nonce", True),
        ("nonce", 1.5),
        ("enforce_nonce", "yes"),
        ("enforce_nonce", 1),
    ],
)
async def test_a_wrong_nonce_type_is_invalid_form_body(
    emu: DiscordEmulator, session: aiohttp.ClientSession, field: str, value: Any
) -> None:
    """nonce must be an int64 or a string of at most 25 characters, enforce_nonce a
    boolean: otherwise 400 code 50035, nothing posted, and a recorded violation."""
    url = f"{emu.api_base}/channels/{emu.channel.id}/messages"
    body = {"content": "x", "nonce": "ok", "enforce_nonce": True, field: value}
    status, answer = await call(session, "POST", url, body)
    assert (status, answer["code"]) == (400, 50035)
    assert emu.channel_messages() == []
    assert [f"field {field!r} must be" in v for v in emu.spec_violations] == [True]
    emu.spec_violations.clear()


@pytest.mark.parametrize("nonce", ["n" * 25, -(2**63), 2**63 - 1, None])
def test_the_nonce_bounds_of_the_spec_are_accepted(nonce: Any) -> None:
    assert check_body("create message", {"nonce": nonce, "enforce_nonce": True}) == ([], [])


def test_tts_false_is_tolerated_on_edits_but_tts_true_is_not() -> None:
    """discord.py puts "tts": false in every edit (the spec has no tts there); that is
    tolerated, anything else named tts is not."""
    assert check_body("edit webhook message", {"content": "x", "tts": False}) == ([], [])
    unknown, _ = check_body("edit webhook message", {"content": "x", "tts": True})
    assert unknown == ["edit webhook message: field 'tts' is not in the spec"]


async def test_leaving_the_emulator_with_violations_fails_the_test() -> None:
    """The async with block ends with EmulatorError naming the request and the field."""
    with pytest.raises(EmulatorError, match="'colour' is not in the spec"):
        async with DiscordEmulator() as emu, aiohttp.ClientSession() as session:
            url = f"{emu.api_base}/channels/{emu.channel.id}/messages"
            headers = {"Authorization": f"Bot {emu.token}"}
            async with session.post(url, json={"colour": "red"}, headers=headers) as answer:
                assert answer.status == 200


async def test_a_failing_block_is_not_masked_by_violations() -> None:
    """When the test already failed inside the block, its own error comes out."""
    with pytest.raises(ZeroDivisionError):
        async with DiscordEmulator() as emu:
            emu.spec_violations.append("POST /x: something")
            _ = 1 / 0


async def test_what_discord_py_sends_conforms(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """discord.py's defer, reply edits, follow-up, channel send (nonce, enforce_nonce) and
    message edit, with embeds and a view: no violation (tts on edits tolerated)."""
    point_discord_at(emu)
    it = await emu.slash("ping")
    url = f"{emu.api_base}/interactions/{it.id}/{it.token}/callback?with_response=true"
    await call(session, "POST", url, {"type": 5})
    webhook = discord.Webhook.partial(emu.application_id, it.token, session=session)
    view = discord.ui.View()
    view.add_item(discord.ui.Button(label="Again", custom_id="again"))
    embed = discord.Embed(title="done")
    assert it.original is not None
    await webhook.edit_message(int(it.original["id"]), content="x", embed=embed)
    await webhook.send("follow-up", wait=True, embed=embed)
    client = discord.Client(intents=discord.Intents.none())
    await client.login(emu.token)
    try:
        channel = client.get_partial_messageable(emu.channel.id)
        posted = await channel.send("post", nonce="job-1", embed=embed, view=view)
        await posted.edit(content="edited", view=None)
    finally:
        await client.close()
    assert emu.spec_violations == []
