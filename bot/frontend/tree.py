"""One place that turns command errors into plain words for users.

:class:`UpscaleTree` is the bot's ``CommandTree``. Every exception that escapes a command
ends up in :meth:`UpscaleTree.on_error`, which picks a plain message by the error's type,
logs the traceback when the error is unexpected, and sends the message whether the
interaction is fresh, deferred, or its token has expired (:func:`bot.frontend.replies.send_reply`).
Users never see exception text: only catalogue texts chosen here or carried by
:class:`UserError`, in the member's Discord language (:mod:`bot.i18n`).

A database that does not answer (:func:`bot.db.transient.db_outage`: a restart, a
failover, a partition, a SQLite file locked by another program) is an expected state:
the member is told in plain words that the bot cannot reach its database and that nothing
was charged, and the log gets one WARNING line without a traceback. Buttons answer the
same way through :func:`answer_error`.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.db.transient import DbOutageKind, db_outage
from bot.frontend.client import Interaction, UpscaleBot
from bot.frontend.replies import Words, render, send_reply
from bot.i18n import ENGLISH, Text, english

log = logging.getLogger(__name__)

GENERIC_FAILURE_TEXT = Text.of("error.generic")
GENERIC_FAILURE = english("error.generic")
GUILD_NOT_ALLOWED = Text.of("guild.not_allowed")
DATABASE_UNREACHABLE = Text.of("error.database_unreachable")
DATABASE_FULL = Text.of("error.database_full")


class UserError(app_commands.AppCommandError):
    """An error whose words are written for the user and safe to show.

    Raise it from a command or a check with the words not yet rendered: a catalogue key
    and its parameters (``UserError("error.not_in_dms")``, ``UserError(text)`` with a
    :class:`bot.i18n.Text`), or any callable that gives the words in a catalogue
    language. :class:`UpscaleTree` renders them in the member's language. ``str()`` and
    :attr:`message` are the English words, for logs.
    """

    def __init__(self, words: Words | str, /, *, ephemeral: bool = True, **params: object) -> None:
        self.words: Words = Text.of(words, **params) if isinstance(words, str) else words
        self.ephemeral = ephemeral
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return self.render(ENGLISH)

    def render(self, language: str) -> str:
        return render(self.words, language)


def _permission_names(permissions: list[str]) -> str:
    # Discord's own names for permissions are English in the API; keep them as they are.
    return ", ".join(p.replace("_", " ").title() for p in permissions)


def describe_error(error: Exception, language: str = ENGLISH) -> tuple[str, bool]:
    """The user's message for ``error`` (a command's error, or what a button's callback
    raised) in ``language`` and whether it was expected."""
    original = getattr(error, "original", error)
    if isinstance(original, UserError):
        return original.render(language), True
    outage = db_outage(original)
    if outage is not None:
        text = DATABASE_FULL if outage is DbOutageKind.DISK_FULL else DATABASE_UNREACHABLE
        return text.render(language), True
    if isinstance(error, app_commands.NoPrivateMessage):
        return Text.of("error.not_in_dms").render(language), True
    # BotMissingPermissions and CommandOnCooldown are CheckFailures too: look at them first.
    if isinstance(error, app_commands.CommandOnCooldown):
        seconds = round(error.retry_after)
        return Text.of("error.cooldown", seconds=seconds).render(language), True
    if isinstance(error, app_commands.BotMissingPermissions):
        missing = _permission_names(error.missing_permissions)
        return Text.of("error.bot_missing_permissions", permissions=missing).render(language), True
    if isinstance(error, app_commands.MissingPermissions | app_commands.CheckFailure):
        return Text.of("error.no_permission").render(language), True
    return GENERIC_FAILURE_TEXT.render(language), False


def guild_allowed(interaction: Interaction, allowed: frozenset[int]) -> bool:
    """``ALLOWED_GUILD_IDS``: empty allows every server; DMs pass (commands refuse them)."""
    return not allowed or interaction.guild_id is None or interaction.guild_id in allowed


async def refuse_if_not_allowed(interaction: Interaction, allowed: frozenset[int]) -> bool:
    """Answer an interaction from a server outside ``ALLOWED_GUILD_IDS``; True if refused."""
    if guild_allowed(interaction, allowed):
        return False
    log.info("Refused an interaction from server %s (not allowed)", interaction.guild_id)
    try:
        await send_reply(interaction, GUILD_NOT_ALLOWED, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("Could not refuse an interaction: HTTP %s", exc.status)
    return True


class UpscaleTree(app_commands.CommandTree[UpscaleBot]):
    """The bot's command tree with the single error handler.

    The bot's ``ALLOWED_GUILD_IDS`` is checked before any command runs: elsewhere every
    command is refused at no cost.
    """

    async def interaction_check(self, interaction: Interaction, /) -> bool:
        allowed = interaction.client.settings.allowed_guild_ids
        return not await refuse_if_not_allowed(interaction, allowed)

    async def on_error(self, interaction: Interaction, error: app_commands.AppCommandError) -> None:
        command = interaction.command.qualified_name if interaction.command else "?"
        await answer_error(interaction, error, f"Command {command}")


async def answer_error(interaction: Interaction, error: Exception, what: str) -> None:
    """Log ``error`` (``what`` failed: "Command upscale", "Button cancel") and tell the
    member in plain words, whatever state the interaction is in.

    Expected errors (a refusal, a database that does not answer) are one line without a
    traceback: INFO for a refusal, WARNING for the database (ERROR when its disk is full:
    the owner must act). Anything else is a bug: ERROR with the traceback.
    """
    original = getattr(error, "original", error)
    user = interaction.user.id
    outage = db_outage(original)
    if outage is DbOutageKind.DISK_FULL:
        log.error("%s for user %s: the database's disk is full (%s)", what, user, original)
    elif outage is not None:
        log.warning(
            "%s for user %s: the database did not answer (%s: %s)",
            what,
            user,
            type(original).__name__,
            original,
        )
    else:
        words, expected = describe_error(error)  # English, for the log
        if expected:
            log.info("%s refused for user %s: %s", what, user, words)
        else:
            log.error(
                "%s failed for user %s",
                what,
                user,
                exc_info=(type(original), original, original.__traceback__),
            )
    try:
        await send_reply(interaction, lambda lang: describe_error(error, lang)[0])
    except discord.HTTPException as exc:
        log.warning("Could not tell user %s about an error: %s", user, exc)
