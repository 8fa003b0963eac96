"""The end-to-end harness itself: what the Discord emulator does, and that its guards bite.

These load only the test probe cog (tests/e2e/probe_cog.py), not the upscaler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.probe_cog import Probe
from tests.emulators.discord import EmulatorError
from tests.harness import GuardError, Harness, decode, eventually, png, running_bot

PROBE = ["tests.e2e.probe_cog"]


def probe(h: Harness) -> Probe:
    cog = h.bot.get_cog("Probe")
    # load_extension imports its own copy of the module, so compare by name, not class
    assert cog is not None and type(cog).__name__ == "Probe"
    return cog  # type: ignore[return-value]


async def test_defer_then_edit_with_a_file(tmp_path: Path) -> None:
    """The bot acks with type 5, then the edit of @original carries the file's bytes."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        it = await h.discord.slash("probe")
        final = await it.final()
        assert it.ack_type == 5
        name, data = it.file(final)
        assert name == "probe.png" and decode(data).size == (8, 8)


async def test_message_context_menu_sees_the_attachments(tmp_path: Path) -> None:
    """A message command receives the target message with its attachments."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        message = h.discord.user_message(attachments=[h.discord.attachment(png(), "cat.png")])
        it = await h.discord.message_command("Probe message", message)
        final = await it.final()
        assert final["content"] == "1 attachments: cat.png"


async def test_button_click_reaches_the_view(tmp_path: Path) -> None:
    """A click on a button of a message the bot sent runs the view's callback."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        it = await h.discord.slash("probe-button")
        message = await it.final()
        click = await h.discord.click(message, "probe:press", member=h.discord.bob)
        reply = await click.final()
        assert reply["content"] == f"pressed by {h.discord.bob.user.id}"


async def test_dm_interaction(tmp_path: Path) -> None:
    """An interaction from a DM channel (user, no member) is handled."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        it = await h.discord.slash("probe", channel=h.discord.dm_channel)
        final = await it.final()
        assert final["content"] == "done"


async def test_late_ack_gets_10062(tmp_path: Path) -> None:
    """An ack after the deadline is answered 404 code 10062, as Discord does."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        h.discord.ack_deadline = 0.2
        it = await h.discord.slash("probe", {"ack_after": 0.4})
        await eventually(lambda: bool(probe(h).http_errors))
        assert probe(h).http_errors == [(404, 10062)]
        assert it.ack_status == 404


async def test_expired_token_gets_50027(tmp_path: Path) -> None:
    """An edit after the token's lifetime is answered 401 code 50027."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        h.discord.token_lifetime = 0.3
        await h.discord.slash("probe", {"delay": 0.6})
        await eventually(lambda: bool(probe(h).http_errors))
        assert probe(h).http_errors == [(401, 50027)]


async def test_oversized_upload_gets_40005(tmp_path: Path) -> None:
    """A file larger than the interaction's upload limit is answered 413 code 40005."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        await h.discord.slash("probe", {"size": 2_000_000}, upload_limit=1_000_000)
        await eventually(lambda: bool(probe(h).http_errors))
        assert probe(h).http_errors == [(413, 40005)]


async def test_forced_reconnect_mid_command_still_completes(tmp_path: Path) -> None:
    """op 7 while a command is running: the bot resumes and the command finishes."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        it = await h.discord.slash("probe", {"delay": 0.5})
        await it.acked()
        await h.discord.force_reconnect()
        final = await it.final()
        assert final["content"] == "done"
        await h.discord.wait_connected()
        assert h.discord.resumes == 1 and h.discord.identifies == 1
        after = await (await h.discord.slash("probe")).final()
        assert after["content"] == "done"


async def test_error_log_guard_fails_the_test(tmp_path: Path) -> None:
    """A command that logs at ERROR makes the harness raise GuardError at exit."""
    with pytest.raises(GuardError, match="deliberate error"):
        async with running_bot(tmp_path, extensions=PROBE) as h:
            await (await h.discord.slash("probe-error")).final()


async def test_unimplemented_endpoint_guard_fails_the_test(tmp_path: Path) -> None:
    """A call to a REST route the emulator does not implement makes the harness raise."""
    with pytest.raises(GuardError, match="endpoints the emulator lacks"):
        async with running_bot(tmp_path, extensions=PROBE) as h:
            await (await h.discord.slash("probe-unknown")).final()
            await h.discord.wait_until(lambda: bool(h.discord.unimplemented))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"nonexistent": 1}, "no option"),
        ({"delay": "slow"}, "does not fit"),
        ({"size": -5}, "outside its range"),
    ],
)
async def test_injection_is_validated_against_registered_commands(
    tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    """An injected interaction that the registered command would not accept fails loudly."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        with pytest.raises(EmulatorError, match=match):
            await h.discord.slash("probe", options)
        with pytest.raises(EmulatorError, match="registered no command"):
            await h.discord.slash("no-such-command")
