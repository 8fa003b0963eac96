"""Members' languages end to end: replies, embeds, buttons and refusals in the member's
Discord language (English when unsupported), channel posts after the token expired in
the server's preferred language, and localised command descriptions in the sync payload.

Expected words are taken from the catalogue (``bot/locales``), never written out here,
so a better translation does not break a test; each test also checks that the words are
not the English ones.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from bot import images
from bot.i18n import t
from tests.emulators.discord import Injected, find_button
from tests.harness import Harness, eventually, running_bot
from tests.imagecorpus import case
from tests.support.images import png

FIELDS = ("size", "format", "file_size", "time", "credits_left")
TIMESTAMP = re.compile(r"<t:\d+:R>")


def field_names(message: dict[str, Any]) -> list[str]:
    return [f["name"] for f in message["embeds"][0]["fields"]]


def expected_fields(language: str) -> list[str]:
    return [t(language, f"embed.field.{name}") for name in FIELDS]


def button_label(message: dict[str, Any], prefix: str) -> str:
    button = find_button(message, lambda c: str(c.get("custom_id", "")).startswith(prefix))
    return str(button["label"])


def refusal_of(data: bytes, language: str) -> str:
    """What prepare_input's refusal of ``data`` reads like in ``language``."""
    with pytest.raises(images.ImageRejected) as caught:
        images.prepare_input(data, "notes.txt")
    return caught.value.render(language)


def has_cancel(it: Injected) -> bool:
    message = it.original
    return message is not None and any(
        str(c.get("custom_id", "")).startswith("upscale:cancel:")
        for row in message.get("components", [])
        for c in row.get("components", [])
    )


async def upscale_in(
    h: Harness, language: str, data: bytes | None = None, filename: str = "cat.png"
) -> tuple[Injected, dict[str, Any]]:
    return await h.upscale(data if data is not None else png(), filename, locale=language)


@pytest.mark.parametrize("language", ["de", "ja"])
async def test_result_refusal_and_delete_button_in_the_members_language(
    tmp_path: Path, language: str
) -> None:
    """The result embed's field names and title, the Delete label, and the refusal of a
    text file come back in the member's language."""
    async with running_bot(tmp_path) as h:
        _, final = await upscale_in(h, language)
        assert field_names(final) == expected_fields(language)
        assert field_names(final) != expected_fields("en-US")
        assert final["embeds"][0]["title"] == t(language, "embed.title")
        assert button_label(final, "upscale:delete:") == t(language, "button.delete")
        assert t(language, "button.delete") != "Delete"
        assert button_label(final, "upscale:compare:") == t(language, "button.compare")

        text_file = b"Just some notes, not a picture.\n"
        _, refused = await upscale_in(h, language, text_file, "notes.txt")
        assert refused["content"] == refusal_of(text_file, language)
        assert refused["content"] != refusal_of(text_file, "en-US")


@pytest.mark.parametrize("language", ["de", "ja"])
async def test_limit_reached_is_told_in_the_members_language(tmp_path: Path, language: str) -> None:
    """A member at their limit is refused in their language, with the reset time."""
    async with running_bot(tmp_path, default_user_limit=1) as h:
        await upscale_in(h, language)
        _, final = await upscale_in(h, language)
        text = final["content"]
        assert TIMESTAMP.search(text)
        expected = t(language, "limit.member_resets", used=1, limit=1, reset="<reset>")
        assert TIMESTAMP.sub("<reset>", text) == expected
        assert "reached your limit" not in text
        assert h.onemin.upscales == 1


@pytest.mark.parametrize("language", ["de", "ja"])
async def test_cancel_button_and_cancelling_in_the_members_language(
    tmp_path: Path, language: str
) -> None:
    """A waiting job's Cancel button is labelled in the member's language, its progress
    line too, and pressing it answers in that language."""
    async with running_bot(tmp_path, max_concurrent_jobs=1) as h:
        upscale = h.onemin.hold("upscale")
        running = await h.discord.slash(
            "upscale", {"image": h.discord.attachment(png(), "a.png")}, locale=language
        )
        await upscale.reached()
        queued = await h.discord.slash(
            "upscale", {"image": h.discord.attachment(png(), "b.png")}, locale=language
        )
        await queued.wait(has_cancel)
        assert queued.original is not None
        assert button_label(queued.original, "upscale:cancel:") == t(language, "button.cancel")
        assert t(language, "button.cancel") != "Cancel"
        assert "in line" not in str(queued.original["content"])

        button = find_button(
            queued.original, lambda c: str(c.get("custom_id", "")).startswith("upscale:cancel:")
        )
        click = await h.discord.click(queued.original, button["custom_id"], locale=language)
        await click.acked()
        done = t(language, "cancel.done", count=1)
        assert queued.original is not None
        queued_id = int(queued.original["id"])
        await h.discord.wait_until(lambda: h.discord.channel.messages[queued_id]["content"] == done)
        upscale.release()
        await running.final(timeout=20)


async def test_unsupported_locale_gets_english(tmp_path: Path) -> None:
    """A Korean member (no Korean catalogue) reads English everywhere."""
    async with running_bot(tmp_path) as h:
        _, final = await upscale_in(h, "ko")
        assert field_names(final) == expected_fields("en-US")
        assert {"Size", "Format", "File size", "Time", "Credits left"} == set(field_names(final))
        assert button_label(final, "upscale:delete:") == "Delete"
        sample = case("text_as_png")
        _, refused = await upscale_in(h, "ko", sample.data, sample.filename)
        assert "not an image" in refused["content"]


async def test_job_outliving_the_token_is_posted_in_the_servers_language(tmp_path: Path) -> None:
    """After the token expired, the result is a channel post in the server's preferred
    language (not the member's): words, embed fields and the Delete label."""
    async with running_bot(tmp_path) as h:
        h.discord.guild.preferred_locale = "de"
        alice = h.discord.alice.user.id
        it = await h.discord.slash(
            "upscale",
            {"image": h.discord.attachment(png(), "a.png")},
            age=14 * 60 + 45,
            locale="ja",
        )
        await it.acked()
        await h.discord.wait_until(
            lambda: any(m.get("attachments") for m in h.discord.channel_messages())
        )
        posted = next(m for m in h.discord.channel_messages() if m.get("attachments"))
        assert posted["content"] == t("de", "result.ready", mention=f"<@{alice}>")
        assert field_names(posted) == expected_fields("de")
        assert button_label(posted, "upscale:delete:") == t("de", "button.delete")
        await h.idle()
        assert await h.balance(alice) == (1, 0)


async def test_failure_after_the_token_expired_is_posted_in_the_servers_language(
    tmp_path: Path,
) -> None:
    """A failure told in the channel after the token expired reads in the server's language."""
    async with running_bot(tmp_path) as h:
        h.discord.guild.preferred_locale = "ja"
        h.onemin.fail("upscale", "rejected")
        it = await h.discord.slash(
            "upscale", {"image": h.discord.attachment(png(), "a.png")}, age=14 * 60 + 45
        )
        await it.acked()
        alice = f"<@{h.discord.alice.user.id}>"
        reason = t("ja", "failure.input_rejected")
        await h.discord.wait_until(
            lambda: any(reason in str(m.get("content")) for m in h.discord.channel_messages())
        )
        posted = next(m for m in h.discord.channel_messages() if reason in str(m["content"]))
        assert posted["content"] == f"{alice} " + t("ja", "failure.message", reason=reason)
        await h.idle()


async def test_synced_commands_carry_localised_descriptions(tmp_path: Path) -> None:
    """The command payload has description_localizations for de and ja (descriptions,
    options, the /quota period choices); names stay English."""
    async with running_bot(tmp_path) as h:
        upscale = h.discord.registered("upscale")
        for language in ("de", "ja"):
            localised = upscale["description_localizations"]
            assert localised[language] == t(language, "cmd.upscale.description")
            image = next(o for o in upscale["options"] if o["name"] == "image")
            assert image["description_localizations"][language] == t(
                language, "cmd.upscale.option.image"
            )
        assert upscale.get("name_localizations") in (None, {})
        quota = h.discord.registered("quota")
        assert quota["description_localizations"]["ja"] == t("ja", "cmd.quota.description")
        period = next(o for o in quota["options"] if o["name"] == "period")
        choices = {c["value"]: c for c in period["options"][0]["choices"]}
        assert choices["weekly"]["name"] == "weekly"
        assert choices["weekly"]["name_localizations"]["de"] == t("de", "period.weekly")
        credits = h.discord.registered("credits")
        assert credits["description_localizations"]["de"] == t("de", "cmd.credits.description")


@pytest.mark.parametrize("language", ["de", "ja"])
async def test_moderator_commands_answer_in_the_moderators_language(
    tmp_path: Path, language: str
) -> None:
    """/quota period and /credits answer in the moderator's language, the period by its
    localised name; a member's refusal of a moderator command too."""
    async with running_bot(tmp_path) as h:
        it = await h.discord.slash(
            "quota",
            {"period": "weekly"},
            subcommand="period",
            member=h.discord.moderator,
            locale=language,
        )
        answer = (await it.final())["content"]
        assert answer == t(language, "quota.period.done", period=t(language, "period.weekly"))
        refused = await h.discord.slash("usage", member=h.discord.alice, locale=language)
        assert (await refused.final())["content"] == t(language, "error.not_a_moderator")
        # /quota logs the change after answering: let the commands finish before stopping.
        await eventually(lambda: not commands_running())


def commands_running() -> bool:
    return any(
        task.get_name() == "CommandTree-invoker" and not task.done() for task in asyncio.all_tasks()
    )
