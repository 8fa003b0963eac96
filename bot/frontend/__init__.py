"""The Discord front end's glue that ``cogs/`` use.

The client and :data:`~bot.frontend.client.Interaction`, the command tree and its error
handler, replies, the translator, the fleet's IDENTIFY turns, and the factory that puts
them together (:mod:`bot.frontend.build`). Only this package and ``cogs/`` import
discord.py.

What the cogs use is here (``__all__``): the bot and how a command reaches it, the one
way to answer a member (and what a job keeps to answer later, :class:`JobContext`), the
errors a command raises for the member, and the translated command texts. What only the
tests use (the fleet's IDENTIFY turns among them) is imported from its module.
"""

from __future__ import annotations

from bot.frontend.build import create_bot
from bot.frontend.client import Interaction, UpscaleBot
from bot.frontend.replies import NONCE_CHARS, Answer, JobContext, Replies, ReplyTarget, saying
from bot.frontend.translator import cmd_text, interaction_locale, localised_choices
from bot.frontend.tree import UserError, answer_error, refuse_if_not_allowed

__all__ = [
    "NONCE_CHARS",
    "Answer",
    "Interaction",
    "JobContext",
    "Replies",
    "ReplyTarget",
    "UpscaleBot",
    "UserError",
    "answer_error",
    "cmd_text",
    "create_bot",
    "interaction_locale",
    "localised_choices",
    "refuse_if_not_allowed",
    "saying",
]
