"""Persistent buttons on upscale messages: Cancel (while waiting) and Delete (on results).

Labels are written in the language of the message that carries them (``language``, a
catalogue language); answers to a press in the presser's Discord language. Both are
:class:`discord.ui.DynamicItem` s whose state lives in the custom id, so they
keep working after a restart and in any process of a fleet.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar, Self

import discord

from bot.frontend.translator import interaction_locale
from bot.frontend.tree import answer_error, refuse_if_not_allowed
from bot.i18n import ENGLISH, t
from bot.jobs import CancelOutcome
from cogs import messages
from cogs.checks import is_moderator

if TYPE_CHECKING:
    from bot.frontend.client import Interaction

log = logging.getLogger(__name__)

CANCEL_ANSWERS = {
    CancelOutcome.TOO_LATE: messages.CANCEL_TOO_LATE,
    CancelOutcome.NOT_ALLOWED: messages.CANCEL_NOT_ALLOWED,
    CancelOutcome.FINISHED: messages.CANCEL_FINISHED,
    CancelOutcome.NOT_FOUND: messages.CANCEL_FINISHED,
}


def _may_act_for(interaction: Interaction, owner_id: int) -> bool:
    return interaction.user.id == owner_id or is_moderator(interaction)


class UpscaleButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"(?!)",  # matches nothing: only the subclasses below are registered
):
    """What the bot's persistent buttons share: a secondary button labelled in
    ``language`` whose custom id ``upscale:<action>:<value>`` carries all its state, and
    that obeys ``ALLOWED_GUILD_IDS`` like the commands. Subclasses give the template
    (with a ``value`` group), the action, the label key and the emoji."""

    action: ClassVar[str]
    label_key: ClassVar[str]
    emoji: ClassVar[str]

    def __init__(self, value: str, language: str | None = ENGLISH) -> None:
        super().__init__(
            discord.ui.Button(
                label=t(language, self.label_key),
                style=discord.ButtonStyle.secondary,
                emoji=self.emoji,
                custom_id=f"upscale:{self.action}:{value}",
            )
        )
        self.value = value

    # discord.py declares an item's interaction for any client (Interaction[ClientT]);
    # these buttons are registered by, and only ever pressed through, the UpscaleBot.
    @classmethod
    async def from_custom_id(
        cls,
        interaction: Interaction,  # type: ignore[override]  # the bot's own: see above
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        return cls(match["value"])

    async def interaction_check(
        self,
        interaction: Interaction,  # type: ignore[override]  # the bot's own: see above
    ) -> bool:
        allowed = interaction.client.settings.allowed_guild_ids
        return not await refuse_if_not_allowed(interaction, allowed)

    async def callback(
        self,
        interaction: Interaction,  # type: ignore[override]  # the bot's own: see above
    ) -> None:
        """Run :meth:`pressed`; what it raises is answered in plain words like a
        command's error (a database that does not answer included), never left as
        "This interaction failed"."""
        try:
            await self.pressed(interaction)
        except Exception as exc:
            await answer_error(interaction, exc, f"Button {self.action}")

    async def pressed(self, interaction: Interaction) -> None:
        raise NotImplementedError


class DeleteResultButton(UpscaleButton, template=r"upscale:delete:(?P<value>[0-9]{1,20})"):
    """Deletes a delivered result; only its requester or a moderator may press it."""

    action, label_key, emoji = "delete", "button.delete", "🗑️"

    def __init__(self, owner_id: int | str, language: str | None = ENGLISH) -> None:
        super().__init__(str(owner_id), language)
        self.owner_id = int(owner_id)

    async def pressed(self, interaction: Interaction) -> None:
        if not _may_act_for(interaction, self.owner_id):
            text = messages.DELETE_NOT_ALLOWED.render(interaction_locale(interaction))
            await interaction.response.send_message(text, ephemeral=True)
            return
        await interaction.response.defer()
        if interaction.message is not None:
            await interaction.message.delete()


class CancelJobButton(UpscaleButton, template=r"upscale:cancel:(?P<value>[0-9a-f]{32})"):
    """Cancels a job not yet sent to the upscaler; requester or moderator only."""

    action, label_key, emoji = "cancel", "button.cancel", "✖️"

    async def pressed(self, interaction: Interaction) -> None:
        bot = interaction.client
        moderator = is_moderator(interaction)
        outcome = await bot.queue.cancel(self.value, interaction.user.id, moderator=moderator)
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
