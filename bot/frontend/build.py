"""Builds the bot: :func:`create_bot` gives it its command tree, translator, persistent
buttons and cogs.

``python -m bot`` (:mod:`bot.app.cli`) and the end-to-end tests build the bot here, the
same way. This module is the front end's top: it names the tree and the translator,
which import the bot's module (:mod:`bot.frontend.client`), so the bot's module does
not import them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiohttp

from bot.frontend.client import (
    DISCORD_MEDIA_ORIGINS,
    BotServices,
    BotSettings,
    ShardedUpscaleBot,
    UpscaleBot,
)
from bot.frontend.translator import Translator
from bot.frontend.tree import UpscaleTree

# Extensions loaded at start-up, in order. Each is loaded on its own so that one broken
# cog is logged and skipped instead of stopping the bot.
DEFAULT_EXTENSIONS: tuple[str, ...] = (
    "cogs.upscale",
    "cogs.menu",
    "cogs.credits",
    "cogs.quota",
    "cogs.owner",
)
# Persistent buttons (``module:Class``), registered by the bot itself before any
# extension, so that buttons on old messages work whichever cog fails to load.
DEFAULT_ITEMS: tuple[str, ...] = (
    "cogs.buttons:DeleteResultButton",
    "cogs.buttons:CancelJobButton",
    "cogs.compare:CompareButton",
)


def create_bot(
    settings: BotSettings,
    *,
    session: aiohttp.ClientSession,
    services: BotServices,
    media_origins: frozenset[str] = DISCORD_MEDIA_ORIGINS,
    extensions: Iterable[str] | None = None,
    **options: Any,
) -> UpscaleBot:
    """Build the bot from ``settings`` and the shared resources the caller owns.

    With ``SHARD_COUNT`` set, a :class:`~bot.frontend.client.ShardedUpscaleBot` running
    ``SHARD_IDS``.
    """
    cls: type[UpscaleBot] = UpscaleBot
    if settings.shard_count is not None:
        cls = ShardedUpscaleBot
        options.setdefault("shard_count", settings.shard_count)
        if settings.shard_ids is not None:
            options.setdefault("shard_ids", list(settings.shard_ids))
    return cls(
        settings,
        session=session,
        services=services,
        media_origins=media_origins,
        extensions=tuple(DEFAULT_EXTENSIONS if extensions is None else extensions),
        items=DEFAULT_ITEMS,
        translator=Translator(),
        tree_cls=UpscaleTree,
        **options,
    )
