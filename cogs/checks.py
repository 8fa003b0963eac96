"""Run-time permission checks shared by the cogs.

Discord's ``default_permissions`` only hides commands by default and server admins can
change it, so moderator commands also check here, every time they run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import discord
from discord import app_commands

from bot.frontend.tree import UserError
from bot.i18n import Text

if TYPE_CHECKING:
    from bot.frontend.client import Interaction

NOT_IN_DMS = Text.of("error.not_in_dms")
NOT_A_MODERATOR = Text.of("error.not_a_moderator")


def is_moderator(interaction: Interaction) -> bool:
    """True for members with Manage Server (as this interaction's permissions say) or one
    of the configured moderator roles; False outside a server."""
    member = interaction.user
    if not isinstance(member, discord.Member) or interaction.guild is None:
        return False
    if interaction.permissions.manage_guild:
        return True
    role_ids = interaction.client.settings.moderator_role_ids
    return any(role.id in role_ids for role in member.roles)


def require_guild(interaction: Interaction) -> discord.Guild:
    """The interaction's guild, or a :class:`UserError` for DMs."""
    if interaction.guild is None:
        raise UserError(NOT_IN_DMS)
    return interaction.guild


_T = TypeVar("_T")


def moderator_only() -> Callable[[_T], _T]:
    """An ``app_commands`` check: guild only, and moderators only."""

    async def predicate(interaction: Interaction) -> bool:
        require_guild(interaction)
        if not is_moderator(interaction):
            raise UserError(NOT_A_MODERATOR)
        return True

    return app_commands.check(predicate)
