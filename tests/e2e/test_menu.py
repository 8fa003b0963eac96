"""The **Upscale image** context menu on a message with several images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.emulators.discord import Injected, find_button
from tests.harness import Harness, running_bot
from tests.support.images import png


def messages_of(h: Harness, it: Injected) -> list[dict[str, Any]]:
    """The interaction's reply and followups, as the channel shows them now."""
    ids = [int(m["id"]) for m in [it.original, *it.followups] if m is not None]
    return [h.discord.channel.messages[i] for i in ids if i in h.discord.channel.messages]


def results(h: Harness, it: Injected) -> list[dict[str, Any]]:
    return [m for m in messages_of(h, it) if m.get("attachments")]


async def test_menu_on_three_images_and_a_text_file_with_a_cap_of_two(tmp_path: Path) -> None:
    """3 images and a text file, MAX_JOBS_PER_USER=2: two results delivered and charged,
    the third image refused in words, the text file reported."""
    async with running_bot(tmp_path, max_jobs_per_user=2) as h:
        target = h.discord.image_message(3, text_file=("notes.txt", b"hello\n"))
        it = await h.discord.message_command("Upscale image", target)
        await h.discord.wait_until(lambda: len(results(h, it)) == 2, timeout=30)
        await h.idle()
        texts = [str(m.get("content")) for m in messages_of(h, it)]
        assert any("I took 2 of the 3 images" in t for t in texts), texts
        assert any("notes.txt is not an image" in t for t in texts), texts
        assert await h.balance(h.discord.alice.user.id) == (2, 0)
        assert h.onemin.upscales == 2


async def test_each_image_is_its_own_job_with_its_own_result(tmp_path: Path) -> None:
    """Two images: two jobs, two results (different job ids), two credits."""
    async with running_bot(tmp_path, max_jobs_per_user=4) as h:
        target = h.discord.image_message(2, text_file=None)
        it = await h.discord.message_command("Upscale image", target)
        await h.discord.wait_until(lambda: len(results(h, it)) == 2, timeout=30)
        footers = {m["embeds"][0]["footer"]["text"] for m in results(h, it)}
        assert len(footers) == 2
        assert await h.balance(h.discord.alice.user.id) == (2, 0)


async def test_a_bad_image_is_refused_alone_and_the_others_go_on(tmp_path: Path) -> None:
    """An image that fails validation is refused in its own message; the next is upscaled."""
    async with running_bot(tmp_path, max_jobs_per_user=4) as h:
        target = h.discord.image_message(
            [("tiny.png", png((8, 8))), ("fine.png", png())], text_file=None
        )
        it = await h.discord.message_command("Upscale image", target)
        await h.discord.wait_until(lambda: len(results(h, it)) == 1, timeout=30)
        texts = [str(m.get("content")) for m in messages_of(h, it)]
        assert any("at least 32 pixels" in t for t in texts), texts
        assert await h.balance(h.discord.alice.user.id) == (1, 0)


async def test_source_button_links_to_the_target_message(tmp_path: Path) -> None:
    """A result from the context menu has a Source link to the message it came from."""
    async with running_bot(tmp_path) as h:
        target = h.discord.image_message(1, text_file=None)
        it = await h.discord.message_command("Upscale image", target)
        final = await it.final(timeout=20)
        link = find_button(final, lambda c: c.get("label") == "Source")
        guild, channel = h.discord.guild.id, h.discord.channel.id
        assert link["url"] == f"https://discord.com/channels/{guild}/{channel}/{target['id']}"
