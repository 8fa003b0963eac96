"""The end-to-end harness itself: what the Discord emulator does, and that its guards bite.

These load only the test probe cog (tests/e2e/probe_cog.py), not the upscaler.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from tests.e2e.probe_cog import Probe
from tests.emulators.discord import ATTACH_FILES, BOT_PERMISSIONS, DiscordEmulator, EmulatorError
from tests.harness import GuardError, Harness, eventually, running_bot
from tests.support.images import decode, png

PROBE = ["tests.e2e.probe_cog"]


def probe(h: Harness) -> Probe:
    cog = h.bot.get_cog("Probe")
    # load_extension imports its own copy of the module, so compare by name, not class
    assert cog is not None and type(cog).__name__ == "Probe"
    return cast(Probe, cog)


async def test_defer_then_edit_with_a_file(tmp_path: Path) -> None:
    """The bot acks with type 5, then the edit of @original carries the file's bytes."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        it = await h.discord.slash("probe", {"fmt": "jpeg"})
        final = await it.final()
        assert it.ack_type == 5
        name, data = it.file(final)
        assert name == "probe.jpeg"
        image = decode(data)
        assert (image.format, image.size) == ("JPEG", (8, 8))
        assert final["attachments"][0]["filename"] == "probe.jpeg"


async def test_message_context_menu_sees_the_attachments(tmp_path: Path) -> None:
    """A message command receives the target message with its attachments."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        message = h.discord.user_message(attachments=[h.discord.attachment(png(), "cat.png")])
        it = await h.discord.message_command("Probe message", message)
        final = await it.final()
        assert final["content"] == "1 attachments: cat.png; 0 embed images"


async def test_message_context_menu_sees_an_image_embed(tmp_path: Path) -> None:
    """A message command on a message with only an image embed receives the embed."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        image = h.discord.attachment(png(), "linked.png")
        message = h.discord.user_message(embeds=[{"type": "image", "image": {"url": image["url"]}}])
        it = await h.discord.message_command("Probe message", message)
        final = await it.final()
        assert final["content"] == "0 attachments: ; 1 embed images"


async def test_button_click_reaches_the_view(tmp_path: Path) -> None:
    """A click on a button of a message the bot sent runs the view's callback."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        it = await h.discord.slash("probe-button")
        message = await it.final()
        click = await h.discord.click(message, "probe:press", member=h.discord.bob)
        reply = await click.final()
        assert reply["content"] == f"pressed by {h.discord.bob.user.id}"


async def test_dm_interaction(tmp_path: Path) -> None:
    """An interaction from a DM channel (user, no member) is answered in that DM."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        it = await h.discord.slash("probe", channel=h.discord.dm_channel)
        final = await it.final()
        assert final["content"] == "done"
        assert final["channel_id"] == str(h.discord.dm_channel.id)
        assert decode(it.file(final)[1]).size == (8, 8)


async def test_late_ack_gets_10062(tmp_path: Path) -> None:
    """An ack after the deadline is answered 404 code 10062, as Discord does."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        h.discord.ack_deadline = 0.2
        it = await h.discord.slash("probe", {"ack_after": 0.4})
        await eventually(lambda: bool(probe(h).http_errors))
        assert probe(h).http_errors == [(404, 10062)]
        assert it.ack_status == 404


async def test_unhandled_late_ack_is_caught_by_the_error_guard(tmp_path: Path) -> None:
    """A late ack left unhandled reaches the tree's handler, whose ERROR log fails the test."""
    with pytest.raises(GuardError, match="Command probe-late failed"):
        async with running_bot(tmp_path, extensions=PROBE) as h:
            h.discord.ack_deadline = 0.2
            it = await h.discord.slash("probe-late", {"wait": 0.4})
            # the handler logs, then its own reply is refused too (a WARNING): wait for it
            await eventually(lambda: any("Could not tell user" in x for x in h.logs.lines))
    callbacks = [c for c in h.discord.calls if c.path.endswith("/callback")]
    assert [(c.status, c.json["type"]) for c in callbacks] == [(404, 5), (404, 4)]
    assert it.ack_status == 404 and it.ack_type is None


async def test_expired_token_gets_50027(tmp_path: Path) -> None:
    """An edit after the token's lifetime is answered 401 code 50027."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        h.discord.token_lifetime = 0.3
        it = await h.discord.slash("probe", {"delay": 0.6})
        await eventually(lambda: bool(probe(h).http_errors))
        assert probe(h).http_errors == [(401, 50027)]
        edits = [c for c in h.discord.calls if c.method == "PATCH" and it.token in c.path]
        assert [c.status for c in edits] == [401]


async def test_oversized_upload_gets_40005(tmp_path: Path) -> None:
    """A file larger than the interaction's upload limit is answered 413 code 40005."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        it = await h.discord.slash("probe", {"size": 2_000_000}, upload_limit=1_000_000)
        await eventually(lambda: bool(probe(h).http_errors))
        assert probe(h).http_errors == [(413, 40005)]
        edits = [c for c in h.discord.calls if c.method == "PATCH" and it.token in c.path]
        assert [(c.status, len(c.files[0][1])) for c in edits] == [(413, 2_000_000)]
        assert it.original is not None and not it.original["attachments"]


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


async def test_interaction_sent_while_disconnected_arrives_after_resume(tmp_path: Path) -> None:
    """An interaction injected between op 7 and the RESUME is held, then handled."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        await h.discord.force_reconnect()
        it = await h.discord.slash("probe")  # no await between: the bot cannot be back yet
        assert h.discord.resumes == 0 and h.discord.pending_events
        final = await it.final()
        assert final["content"] == "done" and h.discord.resumes == 1
        assert not h.discord.pending_events


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


async def test_client_crash_guard_fails_the_test(tmp_path: Path) -> None:
    """An event that kills discord.py's gateway loop (no log) makes the harness raise."""
    died_before_exit = False
    with pytest.raises(GuardError, match=r"client crashed[\s\S]*KeyError: 'token'"):
        async with running_bot(tmp_path, extensions=PROBE) as h:
            app = str(h.discord.application_id)
            await h.discord.dispatch(
                "INTERACTION_CREATE", {"id": "1", "type": 2, "application_id": app}
            )
            assert h.client_task is not None
            await asyncio.wait({h.client_task}, timeout=5)
            died_before_exit = h.client_task.done()
    # (asserted out here: the guard's GuardError would mask a failed assert inside)
    assert died_before_exit
    assert not [line for line in h.logs.lines if " ERROR " in line]  # the error guard is blind


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"nonexistent": 1}, "no option"),
        ({"delay": "slow"}, "does not fit"),
        ({"size": -5}, "outside its range"),
        ({"fmt": "gif"}, "not one of its choices"),
    ],
)
async def test_injection_is_validated_against_registered_options(
    tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    """An injected option the registered command would not accept raises EmulatorError."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        with pytest.raises(EmulatorError, match=match):
            await h.discord.slash("probe", options)
        assert not h.discord.interactions


async def test_injecting_an_unregistered_command_raises(tmp_path: Path) -> None:
    """A command the bot never registered (or of another type) cannot be injected."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        with pytest.raises(EmulatorError, match="registered no command"):
            await h.discord.slash("no-such-command")
        with pytest.raises(EmulatorError, match="registered no command"):
            await h.discord.message_command("probe", h.discord.user_message())


async def test_attachment_option_is_downloaded_from_the_cdn(tmp_path: Path) -> None:
    """An attachment option resolves to the emulator's CDN, which serves its exact bytes."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        data = png()
        it = await h.discord.slash("probe-download", {"image": h.discord.attachment(data, "a.png")})
        final = await it.final()
        assert final["content"] == f"{len(data)} bytes {hashlib.sha256(data).hexdigest()}"
        assert [c.status for c in h.discord.calls if c.path.startswith("/cdn/")] == [200]


@pytest.mark.parametrize("tamper", ["expired", "wrong signature", "no query"])
async def test_cdn_refuses_expired_or_unsigned_urls(tamper: str) -> None:
    """Attachment URLs work only unexpired and with their signature, like Discord's CDN."""
    async with DiscordEmulator() as emu, aiohttp.ClientSession() as session:
        if tamper == "expired":
            emu.attachment_url_lifetime = 0.0
        url = emu.attachment(b"bytes", "a.png")["url"]
        async with session.get(url) as fresh:
            assert fresh.status == (404 if tamper == "expired" else 200)
        if tamper == "wrong signature":
            url = re.sub(r"hm=[0-9a-f]+", "hm=" + "0" * 64, url)
        elif tamper == "no query":
            url = url.split("?")[0]
        async with session.get(url) as response:
            assert response.status == 404
            assert await response.text() == "This content is no longer available."


async def test_every_message_route_records_json_and_files(tmp_path: Path) -> None:
    """Callbacks, @original, followups and channel messages work as JSON and multipart."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        it = await h.discord.slash("probe-routes")
        await h.discord.wait_until(
            lambda: any(m["content"] == "channel json" for m in h.discord.channel_messages())
        )
        app, token = h.discord.application_id, it.token
        channel = f"/api/v10/channels/{h.discord.channel.id}/messages"
        routes = {
            f"/api/v10/interactions/{it.id}/{token}/callback": "callback",
            f"/api/v10/webhooks/{app}/{token}/messages/@original": "@original",
            f"/api/v10/webhooks/{app}/{token}": "followup",
            channel: "channel",
        }
        seen = [
            (c.method, routes.get(c.path, "channel/id"), [n for n, _ in c.files], c.status)
            for c in h.discord.calls
            if c.path in routes or c.path.startswith(channel + "/")
        ]
        assert seen == [
            ("POST", "callback", ["callback.txt"], 200),
            ("PATCH", "@original", [], 200),
            ("POST", "followup", ["followup.txt"], 200),
            ("POST", "followup", [], 200),
            ("POST", "channel", ["channel.txt"], 200),
            ("GET", "channel/id", [], 200),
            ("PATCH", "channel/id", ["edited.txt"], 200),
            ("DELETE", "channel/id", [], 204),
            ("POST", "channel", [], 200),
        ]
        uploaded = {n: d for c in h.discord.calls for n, d in c.files}
        assert all(uploaded[name] == name.encode() for name in uploaded)
        assert it.original is not None and it.original["content"] == "callback edited"
        assert [f["content"] for f in it.followups] == ["followup", "followup json"]
        assert [m["content"] for m in h.discord.channel_messages()] == [
            "callback edited",
            "followup",
            "followup json",
            "channel json",
        ]


async def test_rate_limited_edit_is_retried(tmp_path: Path) -> None:
    """A 429 with Via and retry_after is retried by discord.py; the edit lands."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        h.discord.fail(r"/messages/@original$", 429, times=2, method="PATCH")
        it = await h.discord.slash("probe")
        final = await it.final()
        assert final["content"] == "done"
        patches = [c.status for c in h.discord.calls if c.method == "PATCH"]
        assert patches == [429, 429, 200]


async def test_update_message_click_edits_the_clicked_message(tmp_path: Path) -> None:
    """A button answered with type 7 (UPDATE_MESSAGE) edits the message it is on."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        message = await (await h.discord.slash("probe-button")).final()
        click = await h.discord.click(message, "probe:rename", member=h.discord.bob)
        assert await click.acked() == 7
        expected = f"renamed by {h.discord.bob.user.id}"
        assert h.discord.channel.messages[int(message["id"])]["content"] == expected


async def test_deferred_update_click_then_edit_changes_the_clicked_message(
    tmp_path: Path,
) -> None:
    """A button answered with type 6, then an edit of @original, edits the clicked message."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        message = await (await h.discord.slash("probe-button")).final()
        click = await h.discord.click(message, "probe:later")
        await click.wait(lambda c: bool(c.original and c.original["content"] == "edited later"))
        assert click.ack_type == 6
        stored = h.discord.channel.messages[int(message["id"])]
        assert (stored["content"], stored["components"]) == ("edited later", [])


async def test_channel_permissions_reach_app_permissions_and_the_cache(tmp_path: Path) -> None:
    """Taking Attach Files from the bot shows in app_permissions and in guild.me's rights."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        before = await (await h.discord.slash("probe-perms")).final()
        await h.discord.set_bot_permissions(h.discord.channel, BOT_PERMISSIONS & ~ATTACH_FILES)
        after = await (await h.discord.slash("probe-perms")).final()
        assert before["content"] == "app=True cached=True"
        assert after["content"] == "app=False cached=False"


async def test_deleted_original_is_unknown(tmp_path: Path) -> None:
    """After the bot deletes its reply, fetching @original gets 404 code 10008."""
    async with running_bot(tmp_path, extensions=PROBE) as h:
        it = await h.discord.slash("probe-delete")
        await eventually(lambda: bool(probe(h).http_errors))
        assert probe(h).http_errors == [(404, 10008)]
        assert it.deleted
