"""The **Upscale image** message command: every image of a message, each its own job.

Right-click a message → Apps → Upscale image takes every image attached to or embedded
in it (Discord-hosted), up to :data:`MAX_IMAGES`. Each image is its own job with its own
credit, progress message and result, and its result carries a **Source** link back to
the message. The first image answers in the deferred reply, the others in followups.
The images' job ids are chosen before the acknowledgement, which is journaled with them
(:func:`cogs.intake.acknowledged`).
``MAX_JOBS_PER_USER`` still applies: images beyond the member's free slots are refused
with a message saying how many were taken; an image that fails validation is refused in
its own message without stopping the others; a file that is not an image is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import discord
from discord import app_commands
from discord.ext import commands

from bot.frontend.translator import interaction_locale
from bot.frontend.tree import UserError
from bot.i18n import t
from bot.jobs.model import new_job_id
from cogs import messages
from cogs.intake import SourceImage, acknowledged, allowed_source, start_job

if TYPE_CHECKING:
    from bot.frontend.client import Interaction, UpscaleBot

log = logging.getLogger(__name__)

MAX_IMAGES = 4  # images taken from one message


def shown_name(filename: str, most: int = 80) -> str:
    """A member's file name as chat text: no control or bidi characters, no markdown, no
    mentions, at most ``most`` characters."""
    printable = "".join(c for c in filename if c.isprintable())[:most] or "?"
    return discord.utils.escape_mentions(discord.utils.escape_markdown(printable))


def images_of(
    message: discord.Message, allowed: Callable[[str], bool]
) -> tuple[list[SourceImage], list[str]]:
    """The message's images (attachments, then Discord-hosted embeds), and the names of
    attached files that are not images."""
    found: list[SourceImage] = []
    skipped: list[str] = []
    for attachment in message.attachments:
        if attachment.content_type is None or attachment.content_type.startswith("image/"):
            found.append(SourceImage(attachment.url, attachment.filename, attachment.size))
        else:
            skipped.append(shown_name(attachment.filename))
    seen = {source.url for source in found}
    for embed in message.embeds:
        for media in (embed.image, embed.thumbnail):
            url = next((u for u in (media.proxy_url, media.url) if u and allowed(u)), None)
            if url and url not in seen:
                seen.add(url)
                found.append(SourceImage(url, Path(urlsplit(url).path).name or "image.png", None))
    return found, skipped


class UpscaleMenu(commands.Cog):
    """The message context menu."""

    def __init__(self, bot: UpscaleBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Upscale image", callback=self.upscale_message)
        self.menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def upscale_message(self, interaction: Interaction, message: discord.Message) -> None:
        sources, skipped = images_of(message, lambda url: allowed_source(self.bot, url))
        images = [(source, new_job_id()) for source in sources[:MAX_IMAGES]]
        async with acknowledged(interaction, [job_id for _, job_id in images]) as first_id:
            await self._take(interaction, message, first_id, images, skipped)

    async def _take(
        self,
        interaction: Interaction,
        message: discord.Message,
        first_id: int | None,
        images: list[tuple[SourceImage, str]],
        skipped: list[str],
    ) -> None:
        """Record each image's job (as many as the member has room for), the first in
        the deferred reply ``first_id``, the others in followups."""
        locale = interaction_locale(interaction)
        if not images:
            raise UserError("batch.no_images")
        guild_id = interaction.guild_id or 0
        queue = self.bot.queue
        room = max(
            0,
            queue.max_per_member
            - await queue.count_member_unfinished(guild_id, interaction.user.id),
        )
        if room == 0:
            raise UserError(messages.queue_full_text(queue.max_per_member))
        notes = [t(locale, "batch.skipped_not_image", filename=name) for name in skipped]
        if room < len(images):
            notes.append(
                t(
                    locale,
                    "batch.taken",
                    taken=room,
                    total=len(images),
                    count=queue.max_per_member,
                )
            )
        for index, (source, job_id) in enumerate(images[:room]):
            message_id = first_id
            if index > 0:
                followup = await interaction.followup.send("⏳", wait=True)
                message_id = followup.id
            try:
                await start_job(
                    interaction,
                    message_id,
                    source,
                    "png",
                    job_id=job_id,
                    source_link=message.jump_url,
                )
            except UserError as exc:  # this image only; the others go on
                log.info("Image %d of a message refused: %s", index + 1, exc.message)
                refusal = f"❌ {exc.render(locale)}"
                if message_id is None:
                    await interaction.edit_original_response(content=refusal)
                else:
                    await interaction.followup.edit_message(message_id, content=refusal)
        if notes:
            lines = (t(locale, "note.line", note=note) for note in notes)
            await interaction.followup.send("\n".join(lines))


async def setup(bot: UpscaleBot) -> None:
    await bot.add_cog(UpscaleMenu(bot))
