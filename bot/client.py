"""The Discord bot: a ``commands.Bot`` subclass built by :func:`create_bot`.

``python -m bot`` and the end-to-end tests build the bot through the same factory; the
shared resources (HTTP session, ledger, 1min.ai client) are opened by the caller and
injected, so the bot owns none of them and closing it leaves them to their owner.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord.ext import commands

from bot.settings import DISCORD_MEDIA_ORIGINS, Settings
from bot.tree import UpscaleTree

if TYPE_CHECKING:
    from bot.db import Database
    from bot.jobs import JobQueue
    from bot.ledger import Ledger
    from bot.onemin import OneMinClient
    from bot.services import Services

log = logging.getLogger(__name__)

# Extensions loaded at start-up, in order. Each is loaded on its own so that one broken
# cog is logged and skipped instead of stopping the bot.
DEFAULT_EXTENSIONS: tuple[str, ...] = (
    "cogs.upscale",
    "cogs.menu",
    "cogs.credits",
    "cogs.owner",
)


class UpscaleBot(commands.Bot):
    """The bot. Holds references to the injected services; cogs reach them through it."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession,
        services: Services,
        media_origins: frozenset[str] = DISCORD_MEDIA_ORIGINS,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        **options: Any,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        options.setdefault("allowed_mentions", discord.AllowedMentions(everyone=False, roles=False))
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=UpscaleTree,
            help_command=None,
            **options,
        )
        self.settings = settings
        self.session = session
        if isinstance(self.tree, UpscaleTree):
            self.tree.allowed_guilds = settings.allowed_guild_ids
        self.services = services
        # Origins (scheme://host[:port]) members' images may be downloaded from.
        self.media_origins = media_origins
        self._extensions = tuple(extensions)
        self.failed_extensions: list[str] = []

    @property
    def db(self) -> Database:
        return self.services.db

    @property
    def ledger(self) -> Ledger:
        return self.services.ledger

    @property
    def onemin(self) -> OneMinClient:
        return self.services.onemin

    @property
    def queue(self) -> JobQueue:
        return self.services.queue

    async def setup_hook(self) -> None:
        for name in self._extensions:
            try:
                await self.load_extension(name)
            except Exception:
                self.failed_extensions.append(name)
                log.exception("Could not load extension %s; continuing without it", name)
        if self.queue.front_end is None:
            log.warning("No extension runs upscale jobs: the queue stays stopped")
        else:
            # Jobs left by a restart continue; those that cannot are refunded and told.
            await self.queue.recover(single_process=self.services.db.engine == "sqlite")
            self.queue.start()
        await self.sync_commands()

    async def sync_commands(self) -> list[discord.app_commands.AppCommand]:
        """Register the application commands: to ``DEV_GUILD_ID`` if set, else globally."""
        guild_id = self.settings.dev_guild_id
        if guild_id is not None:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("Synced %d commands to guild %d", len(synced), guild_id)
        else:
            synced = await self.tree.sync()
            log.info("Synced %d commands globally", len(synced))
        return synced

    async def close(self) -> None:
        """Stop the queue first (members are told about stopped jobs), then disconnect."""
        if not self.is_closed():
            await self.queue.shutdown(self.settings.shutdown_grace)
        await super().close()

    async def on_ready(self) -> None:
        user = self.user
        log.info(
            "Ready as %s (id %s) in %d guilds", user, user.id if user else "?", len(self.guilds)
        )
        for guild in self.guilds:
            self._warn_if_not_allowed(guild)

    async def on_guild_join(self, guild: discord.Guild) -> None:
        self._warn_if_not_allowed(guild)

    def _warn_if_not_allowed(self, guild: discord.Guild) -> None:
        allowed = self.settings.allowed_guild_ids
        if allowed and guild.id not in allowed:
            log.warning(
                "The bot is in server %s (%d), which ALLOWED_GUILD_IDS does not list: every"
                " command there is refused. Remove the bot from it, or add the id.",
                guild.name,
                guild.id,
            )


def bot_of(interaction: discord.Interaction[Any]) -> UpscaleBot:
    """The bot that received ``interaction``, typed (instead of ``interaction.client``)."""
    client = interaction.client
    if not isinstance(client, UpscaleBot):
        raise TypeError(f"interaction from an unexpected client: {type(client).__name__}")
    return client


def create_bot(
    settings: Settings,
    *,
    session: aiohttp.ClientSession,
    services: Services,
    media_origins: frozenset[str] = DISCORD_MEDIA_ORIGINS,
    extensions: Iterable[str] | None = None,
    **options: Any,
) -> UpscaleBot:
    """Build the bot from ``settings`` and the shared resources the caller owns."""
    return UpscaleBot(
        settings,
        session=session,
        services=services,
        media_origins=media_origins,
        extensions=tuple(DEFAULT_EXTENSIONS if extensions is None else extensions),
        **options,
    )
