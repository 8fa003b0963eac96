"""The **Compare** button on a delivered result: before and after, side by side.

Anyone may press it. It answers ephemerally with one image rendered locally (no credit,
no call to 1min.ai) from the two small crops stored when the result was delivered, so it
works after a restart and in any process of a fleet, for at least a week.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import discord

from bot import compare
from bot.client import bot_of
from bot.i18n import t
from cogs.buttons import UpscaleButton


class CompareButton(UpscaleButton, template=r"upscale:compare:(?P<value>[0-9a-f]{32})"):
    """Shows the same region of the input (scaled 4x, nearest-neighbour) and the result."""

    action, label_key, emoji = "compare", "button.compare", "🔍"

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        locale = str(interaction.locale)
        await interaction.response.defer(ephemeral=True, thinking=True)
        crops = await bot_of(interaction).queue.compare_crops(self.value)
        if crops is None:
            await interaction.edit_original_response(content=t(locale, "compare.expired"))
            return
        labels = (t(locale, "compare.label_before"), t(locale, "compare.label_after"))
        image = await asyncio.to_thread(compare.render, crops, labels=labels)
        await interaction.edit_original_response(
            content=t(locale, "compare.caption"),
            attachments=[discord.File(io.BytesIO(image), filename="compare.png")],
        )
