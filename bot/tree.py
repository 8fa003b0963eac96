"""One place that turns command errors into plain words for users.

:class:`UpscaleTree` is the bot's ``CommandTree``. Every exception that escapes a command
ends up in :meth:`UpscaleTree.on_error`, which picks a plain message by the error's type,
logs the traceback when the error is unexpected, and sends the message whether the
interaction is fresh, deferred, or its token has expired (:func:`bot.replies.send_reply`).
Users never see exception text: only the messages written here or carried by :class:`UserError`.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.replies import send_reply

log = logging.getLogger(__name__)

GENERIC_FAILURE = "Something went wrong on our side. It has been logged; please try again later."


class UserError(app_commands.AppCommandError):
    """An error whose message is written for the user and safe to show as is.

    Raise it from a command or a check; :class:`UpscaleTree` shows ``message`` as is.
    """

    def __init__(self, message: str, *, ephemeral: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.ephemeral = ephemeral


def describe_error(error: app_commands.AppCommandError) -> tuple[str, bool]:
    """The user's message for ``error`` and whether it was expected (no traceback needed)."""
    original = getattr(error, "original", error)
    if isinstance(original, UserError):
        return original.message, True
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command works in a server channel, not in direct messages.", True
    # BotMissingPermissions and CommandOnCooldown are CheckFailures too: look at them first.
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s.", True
    if isinstance(error, app_commands.BotMissingPermissions):
        missing = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
        return f"I need these permissions in this channel: {missing}.", True
    if isinstance(error, app_commands.MissingPermissions | app_commands.CheckFailure):
        return "You don't have permission to use this command.", True
    return GENERIC_FAILURE, False


GUILD_NOT_ALLOWED = "This bot is not enabled in this server. Nothing was charged."


def guild_allowed(interaction: discord.Interaction, allowed: frozenset[int]) -> bool:
    """``ALLOWED_GUILD_IDS``: empty allows every server; DMs pass (commands refuse them)."""
    return not allowed or interaction.guild_id is None or interaction.guild_id in allowed


async def refuse_if_not_allowed(interaction: discord.Interaction, allowed: frozenset[int]) -> bool:
    """Answer an interaction from a server outside ``ALLOWED_GUILD_IDS``; True if refused."""
    if guild_allowed(interaction, allowed):
        return False
    log.info("Refused an interaction from server %s (not allowed)", interaction.guild_id)
    try:
        await send_reply(interaction, GUILD_NOT_ALLOWED, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("Could not refuse an interaction: HTTP %s", exc.status)
    return True


class UpscaleTree(app_commands.CommandTree):
    """The bot's command tree with the single error handler.

    ``allowed_guilds`` (``ALLOWED_GUILD_IDS``) is checked before any command runs:
    elsewhere every command is refused at no cost.
    """

    allowed_guilds: frozenset[int] = frozenset()

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        return not await refuse_if_not_allowed(interaction, self.allowed_guilds)

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        message, expected = describe_error(error)
        command = interaction.command.qualified_name if interaction.command else "?"
        if expected:
            log.info("Command %s refused for user %s: %s", command, interaction.user.id, message)
        else:
            original = getattr(error, "original", error)
            log.error(
                "Command %s failed for user %s",
                command,
                interaction.user.id,
                exc_info=(type(original), original, original.__traceback__),
            )
        try:
            await send_reply(interaction, message, ephemeral=True)
        except discord.HTTPException as exc:
            log.warning("Could not tell user %s about an error: %s", interaction.user.id, exc)
