"""Persistent buttons on upscale messages: Cancel (while waiting) and Delete (on results).

Labels are written in the language of the message that carries them (``language``, a
catalogue language); answers to a press in the presser's Discord language. Both are
:class:`discord.ui.DynamicItem` s whose state lives in the custom id, so they
keep working after a restart and in any process of a fleet.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import discord

from bot.client import bot_of
from bot.i18n import ENGLISH, t
from bot.i18n_discord import interaction_locale
from bot.jobs import CancelOutcome
from bot.tree import refuse_if_not_allowed
from cogs import messages
from cogs.checks import is_moderator

log = logging.getLogger(__name__)

CANCEL_ANSWERS = {
    CancelOutcome.TOO_LATE: messages.CANCEL_TOO_LATE,
    CancelOutcome.NOT_ALLOWED: messages.CANCEL_NOT_ALLOWED,
    CancelOutcome.FINISHED: messages.CANCEL_FINISHED,
    CancelOutcome.NOT_FOUND: messages.CANCEL_FINISHED,
}


async def _allowed_here(interaction: discord.Interaction[Any]) -> bool:
    """Buttons obey ``ALLOWED_GUILD_IDS`` like commands do."""
    allowed = bot_of(interaction).settings.allowed_guild_ids
    return not await refuse_if_not_allowed(interaction, allowed)


def _may_act_for(interaction: discord.Interaction[Any], owner_id: int) -> bool:
    roles = bot_of(interaction).settings.moderator_role_ids
    return interaction.user.id == owner_id or is_moderator(interaction.user, roles)


class DeleteResultButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"upscale:delete:(?P<owner>[0-9]{1,20})",
):
    """Deletes a delivered result; only its requester or a moderator may press it."""

    def __init__(self, owner_id: int, language: str = ENGLISH) -> None:
        super().__init__(
            discord.ui.Button(
                label=t(language, "button.delete"),
                style=discord.ButtonStyle.secondary,
                emoji="🗑️",
                custom_id=f"upscale:delete:{owner_id}",
            )
        )
        self.owner_id = owner_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> DeleteResultButton:
        return cls(int(match["owner"]))

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return await _allowed_here(interaction)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        if not _may_act_for(interaction, self.owner_id):
            text = messages.DELETE_NOT_ALLOWED.render(interaction_locale(interaction))
            await interaction.response.send_message(text, ephemeral=True)
            return
        await interaction.response.defer()
        if interaction.message is not None:
            await interaction.message.delete()


class CancelJobButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"upscale:cancel:(?P<job>[0-9a-f]{32})",
):
    """Cancels a job not yet sent to the upscaler; requester or moderator only."""

    def __init__(self, job_id: str, language: str = ENGLISH) -> None:
        super().__init__(
            discord.ui.Button(
                label=t(language, "button.cancel"),
                style=discord.ButtonStyle.secondary,
                emoji="✖️",
                custom_id=f"upscale:cancel:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> CancelJobButton:
        return cls(match["job"])

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return await _allowed_here(interaction)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = bot_of(interaction)
        moderator = is_moderator(interaction.user, bot.settings.moderator_role_ids)
        outcome = await bot.queue.cancel(self.job_id, interaction.user.id, moderator=moderator)
        language = interaction_locale(interaction)
        if outcome is CancelOutcome.CANCELLED:
            done = messages.cancelled_text(bot.settings.upscale_cost).render(language)
            await interaction.response.edit_message(content=done, view=None)
            return
        answer = CANCEL_ANSWERS[outcome].render(language)
        await interaction.response.send_message(answer, ephemeral=True)


def cancel_view(job_id: str, language: str = ENGLISH) -> discord.ui.View:
    """The Cancel button, labelled in ``language``."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelJobButton(job_id, language))
    return view
