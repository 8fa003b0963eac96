"""The Discord emulator's CDN: attachments that download slowly, wait for a release, or
are gone (for tests of downloads cut short or refused; no bot involved)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.emulators.discord import DiscordEmulator
from tests.emulators.discord.cdn import GONE_TEXT

DATA = b"attachment bytes"


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as response:
        return response.status, await response.read()


def cdn_statuses(emu: DiscordEmulator) -> list[int]:
    return [c.status for c in emu.calls if c.path.startswith("/cdn/")]


async def test_a_delayed_attachment_is_served_whole_after_its_delay(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """With a delay the bytes come, unchanged, no sooner than the delay (a lower bound:
    a sleep never ends early, so this cannot flake)."""
    attachment = emu.attachment(DATA, "a.png")
    emu.delay_attachment(attachment, 0.2)
    started = time.monotonic()
    assert await fetch(session, attachment["url"]) == (200, DATA)
    assert time.monotonic() - started >= 0.2


async def test_a_held_attachment_waits_for_its_release(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """A held download stays in flight (nothing answered, nothing recorded) until the test
    releases it; then its bytes arrive."""
    attachment = emu.attachment(DATA, "a.png")
    hold = emu.hold_attachment(attachment)
    pending = asyncio.create_task(fetch(session, attachment["url"]))
    await hold.reached()
    assert hold.waiting == 1 and not pending.done()
    assert cdn_statuses(emu) == []
    hold.release()
    assert await pending == (200, DATA)
    assert cdn_statuses(emu) == [200]
    assert hold.waiting == 0


async def test_a_released_hold_lets_later_downloads_through(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """After the release, a new download of the same attachment is not held."""
    attachment = emu.attachment(DATA, "a.png")
    hold = emu.hold_attachment(attachment)
    hold.release()
    assert await fetch(session, attachment["url"]) == (200, DATA)
    assert hold.arrived == 1 and hold.waiting == 0


async def test_stopping_the_emulator_ends_a_held_download(session: aiohttp.ClientSession) -> None:
    """A download still held when the emulator stops ends (no hang, no bytes)."""
    emu = DiscordEmulator()
    await emu.start()
    attachment = emu.attachment(DATA, "a.png")
    hold = emu.hold_attachment(attachment)
    pending = asyncio.create_task(fetch(session, attachment["url"]))
    await hold.reached()
    await emu.stop()
    try:
        status, body = await pending
    except aiohttp.ClientError:
        return  # the connection was closed: ended without bytes
    assert status != 200 and body != DATA


async def test_a_gone_attachment_answers_404_like_discord(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """A removed attachment (its message deleted) answers 404 with Discord's text."""
    attachment = emu.attachment(DATA, "a.png")
    assert await fetch(session, attachment["url"]) == (200, DATA)
    emu.remove_attachment(attachment)
    assert await fetch(session, attachment["url"]) == (404, GONE_TEXT.encode())
    assert cdn_statuses(emu) == [200, 404]


async def test_an_attachment_removed_while_held_answers_404(
    emu: DiscordEmulator, session: aiohttp.ClientSession
) -> None:
    """Removed while its download waits: the download gets 404 once released."""
    attachment = emu.attachment(DATA, "a.png")
    hold = emu.hold_attachment(attachment)
    pending = asyncio.create_task(fetch(session, attachment["url"]))
    await hold.reached()
    emu.remove_attachment(attachment)
    hold.release()
    assert await pending == (404, GONE_TEXT.encode())


def test_controls_refuse_an_attachment_the_cdn_does_not_host() -> None:
    """Delaying, holding or removing an unknown attachment is a test error."""
    emu = DiscordEmulator()
    stranger = {"id": "1", "url": "http://127.0.0.1:1/cdn/attachments/1/1/x.png"}
    for control in (
        lambda: emu.delay_attachment(stranger, 1.0),
        lambda: emu.hold_attachment(stranger),
        lambda: emu.remove_attachment(stranger),
    ):
        with pytest.raises(KeyError):
            control()
