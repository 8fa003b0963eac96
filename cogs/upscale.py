"""``/upscale`` and the **Upscale image** message command: accepting a job.

The cog acknowledges first, then checks what it can without spending anything (guild,
the bot's permissions, declared size, origin), downloads the image to the spool
(:mod:`bot.download`), validates it (:meth:`bot.jobs.JobQueue.prepare`) and hands it
to the queue, which records it durably. Everything after that, in this process or any
other, is :mod:`cogs.delivery`'s job; the buttons are in :mod:`cogs.buttons`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import discord
from discord import app_commands
from discord.ext import commands

from bot import images
from bot.download import DownloadFailed, DownloadTooLarge, download_to
from bot.i18n_discord import Translator, cmd_text
from bot.jobs import JobRequest, LimitReached, QueueClosed, QueueFull, Stage
from bot.settings import OUTPUT_FORMATS
from bot.tree import UserError
from cogs import messages
from cogs.buttons import CancelJobButton, DeleteResultButton
from cogs.checks import NOT_IN_DMS
from cogs.compare import CompareButton
from cogs.delivery import DiscordFrontEnd, context_for

if TYPE_CHECKING:
    from bot.client import UpscaleBot

log = logging.getLogger(__name__)

FORMAT_CHOICES = [app_commands.Choice(name=f.upper(), value=f) for f in OUTPUT_FORMATS]


@dataclass(frozen=True, slots=True)
class SourceImage:
    """Where the input comes from: a Discord-hosted URL and its declared facts."""

    url: str
    filename: str
    declared_size: int | None


class Upscale(commands.Cog):
    """The upscale commands."""

    def __init__(self, bot: UpscaleBot) -> None:
        self.bot = bot
        self.front = DiscordFrontEnd(bot)

    async def cog_load(self) -> None:
        # Command descriptions in the members' languages; installed before setup_hook
        # syncs the commands (extensions load first).
        await self.bot.tree.set_translator(Translator())
        self.bot.add_dynamic_items(DeleteResultButton, CancelJobButton, CompareButton)
        self.bot.queue.attach(self.front)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(DeleteResultButton, CancelJobButton, CompareButton)

    # -- commands ----------------------------------------------------------------------

    @app_commands.command(name="upscale", description=cmd_text("cmd.upscale.description"))
    @app_commands.describe(
        image=cmd_text("cmd.upscale.option.image"), format=cmd_text("cmd.upscale.option.format")
    )
    @app_commands.choices(format=FORMAT_CHOICES)
    @app_commands.guild_only()
    async def upscale(
        self,
        interaction: discord.Interaction[Any],
        image: discord.Attachment,
        format: app_commands.Choice[str] | None = None,
    ) -> None:
        message_id = await defer(interaction)
        source = SourceImage(image.url, image.filename, image.size)
        await self.start_job(interaction, message_id, source, format.value if format else "png")

    # -- the job -----------------------------------------------------------------------

    def allowed_source(self, url: str) -> bool:
        """True when ``url`` is on one of the bot's media origins (Discord's CDN)."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        return origin in self.bot.media_origins

    async def start_job(
        self,
        interaction: discord.Interaction[Any],
        message_id: int | None,
        source: SourceImage,
        output_format: str,
        *,
        source_url: str | None = None,
    ) -> None:
        """Check, download, validate and queue one image; its answers go to ``message_id``.

        ``source_url`` (the message the image came from) becomes the result's Source link.
        Raises :class:`UserError` with the member's message when the image is refused.
        """
        guild = interaction.guild
        if guild is None:
            raise UserError(NOT_IN_DMS)
        perms = interaction.app_permissions
        if not (perms.attach_files and perms.embed_links):
            raise UserError(messages.MISSING_PERMISSIONS)
        queue = self.bot.queue
        if (await self.bot.services.circuit.state()).open:
            raise UserError(messages.CIRCUIT_OPEN_REFUSAL)
        limits = queue.limits
        if source.declared_size is not None and source.declared_size > limits.max_bytes:
            raise UserError(messages.too_large_text(limits.max_bytes))
        if not self.allowed_source(source.url):
            raise UserError(messages.NOT_ON_DISCORD)
        member = interaction.user
        role_ids = [r.id for r in getattr(member, "roles", ())]
        try:
            ticket = await queue.admit(guild.id, member.id)
        except QueueFull as exc:
            raise UserError(messages.queue_full_text(exc.limit)) from None
        except QueueClosed:
            raise UserError(messages.SHUTDOWN) from None
        async with ticket:
            path = queue.spool_path(ticket)
            try:
                await download_to(self.bot.session, source.url, path, limits.max_bytes)
            except DownloadTooLarge:
                raise UserError(messages.too_large_text(limits.max_bytes)) from None
            except DownloadFailed:
                raise UserError(messages.DOWNLOAD_FAILED) from None
            try:
                prepared = await queue.prepare(ticket, path, source.filename)
            except images.ImageRejected as exc:
                raise UserError(exc.text) from None
            request = JobRequest(
                guild_id=guild.id,
                channel_id=interaction.channel_id or 0,
                member_id=member.id,
                role_ids=role_ids,
                output_format=output_format,
                context=context_for(interaction, message_id, role_ids, source_url),
            )
            try:
                job = await queue.submit(ticket, request, prepared)
            except LimitReached as exc:
                raise UserError(messages.limit_text(exc)) from None
            except QueueClosed:
                raise UserError(messages.SHUTDOWN) from None
        position = queue.position(job)
        if position is not None:
            self.front.progress(job, Stage.QUEUED, position)


async def defer(interaction: discord.Interaction[Any]) -> int | None:
    """Acknowledge at once; returns the deferred reply's message id when Discord gives it."""
    response = await interaction.response.defer(thinking=True)
    return response.message_id if response is not None else None


async def setup(bot: UpscaleBot) -> None:
    await bot.add_cog(Upscale(bot))
