"""``/upscale``: upscale an attached image.

The command acknowledges first (journaled with the job's id, chosen beforehand, so that
a restart before the job is recorded still answers the member), then hands the image to
:mod:`cogs.intake` (shared with the **Upscale image** message command), which has the
queue record the job and take the image in. Everything after that, in this process or any other, is
:mod:`cogs.delivery`'s job; the buttons are in :mod:`cogs.buttons`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.frontend.journal import answer_unrecorded, journal_of
from bot.frontend.translator import cmd_text
from bot.jobs.model import new_job_id
from bot.onemin.client import OUTPUT_FORMATS
from cogs.delivery import DiscordFrontEnd
from cogs.intake import SourceImage, acknowledged, start_job

if TYPE_CHECKING:
    from bot.frontend.client import Interaction, UpscaleBot

log = logging.getLogger(__name__)

FORMAT_CHOICES = [app_commands.Choice(name=f.upper(), value=f) for f in OUTPUT_FORMATS]


class Upscale(commands.Cog):
    """The upscale command, and the queue's Discord front end."""

    def __init__(self, bot: UpscaleBot) -> None:
        self.bot = bot
        timings = bot.settings.timings  # short in tests (see bot.timings)
        self.front = DiscordFrontEnd(
            bot,
            progress_interval=timings.progress_interval,
            first_progress_delay=timings.first_progress_delay,
            place_interval_per_place=timings.place_interval_per_place,
            place_interval_max=timings.place_interval_max,
            lookup_backoff=timings.lookup_backoff,
        )

    async def cog_load(self) -> None:
        self.bot.queue.attach(self.front)
        # Members acknowledged by the last run whose jobs were never recorded are told
        # so, before the queue claims anything (the bot starts it once the cogs loaded).
        journal = journal_of(self.bot)
        unfinished = await asyncio.to_thread(journal.open)
        await answer_unrecorded(
            journal, unfinished, db=self.bot.db, store=self.bot.queue.store, client=self.bot
        )

    async def cog_unload(self) -> None:
        journal_of(self.bot).close()

    @app_commands.command(name="upscale", description=cmd_text("cmd.upscale.description"))
    @app_commands.describe(
        image=cmd_text("cmd.upscale.option.image"), format=cmd_text("cmd.upscale.option.format")
    )
    @app_commands.choices(format=FORMAT_CHOICES)
    @app_commands.guild_only()
    async def upscale(
        self,
        interaction: Interaction,
        image: discord.Attachment,
        format: app_commands.Choice[str] | None = None,
    ) -> None:
        job_id = new_job_id()
        async with acknowledged(interaction, [job_id]) as message_id:
            source = SourceImage(image.url, image.filename, image.size)
            output_format = format.value if format else "png"
            await start_job(interaction, message_id, source, output_format, job_id=job_id)


async def setup(bot: UpscaleBot) -> None:
    await bot.add_cog(Upscale(bot))
