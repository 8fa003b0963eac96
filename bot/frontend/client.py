"""The Discord bot (:class:`UpscaleBot`) and :data:`Interaction`, the interactions it receives.

The bot is built by :func:`bot.frontend.build.create_bot`, which ``python -m bot`` and the
end-to-end tests share; the shared resources (HTTP session, ledger, 1min.ai client) are
opened by the caller and injected, so the bot owns none of them and closing it leaves
them to their owner. What it reads of them is stated here, in the front end's terms
(:class:`BotSettings`, :class:`BotServices`): the process's settings and services fit
them without this package importing the process.

Every command, check, button and helper of the front end takes an :data:`Interaction`,
so ``interaction.client`` is this bot, typed. This module is the front end's bottom:
the tree, the translator and the replies import it, and it imports none of them (the
factory hands it its tree and translator).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.db.outages import report_db_outage
from bot.frontend.fleet import IdentifyGate, command_digest, sync_once
from bot.frontend.gateway import ShardStatus

if TYPE_CHECKING:
    from bot.db import Database
    from bot.images.workers import ImageWorkers
    from bot.jobs import JobQueue
    from bot.ledger import Ledger
    from bot.onemin.circuit import Circuit
    from bot.onemin.client import OneMinClient
    from bot.timings import Timings

log = logging.getLogger(__name__)

# Origins the bot downloads members' images from: Discord's CDN and media proxies only.
DISCORD_MEDIA_ORIGINS: frozenset[str] = frozenset(
    {
        "https://cdn.discordapp.com",
        "https://media.discordapp.net",
        "https://images-ext-1.discordapp.net",
        "https://images-ext-2.discordapp.net",
    }
)


class BotSettings(Protocol):
    """What the front end reads of the settings (:class:`bot.app.settings.Settings`)."""

    @property
    def dev_guild_id(self) -> int | None: ...

    @property
    def allowed_guild_ids(self) -> frozenset[int]: ...  # empty: any

    @property
    def moderator_role_ids(self) -> frozenset[int]: ...

    @property
    def alert_channel_id(self) -> int | None: ...  # None: DM the application owner

    @property
    def upscale_cost(self) -> int: ...

    @property
    def shutdown_grace(self) -> float: ...  # seconds running jobs get when the bot stops

    @property
    def shard_count(self) -> int | None: ...

    @property
    def shard_ids(self) -> tuple[int, ...] | None: ...  # None: every shard

    @property
    def timings(self) -> Timings: ...


class BotServices(Protocol):
    """What the front end uses of the process's services (:class:`bot.app.services.Services`)."""

    @property
    def db(self) -> Database: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def onemin(self) -> OneMinClient: ...

    @property
    def queue(self) -> JobQueue: ...

    @property
    def circuit(self) -> Circuit: ...

    @property
    def image_workers(self) -> ImageWorkers: ...


class UpscaleBot(commands.Bot):
    """The bot. Holds references to the injected services; cogs reach them through it.

    ``tree_cls`` (in ``options``) and ``translator`` come from the factory; ``items``
    (``module:Class``) are the persistent buttons it registers before loading the
    ``extensions``.
    """

    def __init__(
        self,
        settings: BotSettings,
        *,
        session: aiohttp.ClientSession,
        services: BotServices,
        media_origins: frozenset[str] = DISCORD_MEDIA_ORIGINS,
        extensions: Sequence[str] = (),
        items: Sequence[str] = (),
        translator: app_commands.Translator | None = None,
        **options: Any,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        options.setdefault("allowed_mentions", discord.AllowedMentions(everyone=False, roles=False))
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            **options,
        )
        self.settings = settings
        self.session = session
        self.services = services
        # Origins (scheme://host[:port]) members' images may be downloaded from.
        self.media_origins = media_origins
        self._extensions = tuple(extensions)
        self._items = tuple(items)
        self._translator = translator
        self.failed_extensions: list[str] = []
        self.identify_gate = IdentifyGate(services.db, spacing=settings.timings.identify_spacing)
        self._identify_concurrency: int | None = None

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

    @property
    def circuit(self) -> Circuit:
        return self.services.circuit

    @property
    def image_workers(self) -> ImageWorkers:
        return self.services.image_workers

    async def setup_hook(self) -> None:
        # Command descriptions in the members' languages, and the persistent buttons:
        # the bot's own, before the extensions, so no cog's failure loses them.
        if self._translator is not None:
            await self.tree.set_translator(self._translator)
        for spec in self._items:
            try:
                self.add_dynamic_items(_load_item(spec))
            except Exception:
                log.exception("Could not register the button %s; continuing without it", spec)
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
            await self.queue.recover(single_process=self.db.engine == "sqlite")
            self.queue.start()
        await self.sync_commands()

    async def sync_commands(self) -> list[discord.app_commands.AppCommand] | None:
        """Register the application commands: to ``DEV_GUILD_ID`` if set, else globally.

        Once per fleet (:func:`bot.frontend.fleet.sync_once`): skipped, returning None, when this
        command set was already synced for this application and scope.
        """
        guild_id = self.settings.dev_guild_id
        guild = None if guild_id is None else discord.Object(id=guild_id)
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        where = "globally" if guild_id is None else f"to guild {guild_id}"
        scope = f"{self.application_id}:{'global' if guild_id is None else f'guild:{guild_id}'}"
        digest = command_digest(await self._sync_payload(guild))
        synced = await sync_once(
            self.db, scope, digest, lambda: self.tree.sync(guild=guild), instance=self.queue.owner
        )
        if synced is None:
            log.info("Commands unchanged since the fleet last synced them %s; not syncing", where)
        else:
            log.info("Synced %d commands %s", len(synced), where)
        return synced

    async def _sync_payload(self, guild: discord.abc.Snowflake | None) -> list[dict[str, Any]]:
        """What :meth:`discord.app_commands.CommandTree.sync` would send, translated."""
        commands = self.tree.get_commands(guild=guild)
        translator = self.tree.translator
        if translator is None:
            return [command.to_dict(self.tree) for command in commands]
        return [await command.get_translated_payload(self.tree, translator) for command in commands]

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Wait for this shard's IDENTIFY turn, fleet-wide (:class:`~.fleet.IdentifyGate`).

        A database failure falls back to discord.py's own pacing (5 s unless initial).
        """
        try:
            await self.identify_gate.wait_turn(shard_id, await self._max_concurrency())
        except Exception as exc:
            report_db_outage(log, "taking an IDENTIFY turn", exc)
            await super().before_identify_hook(shard_id, initial=initial)

    async def _max_concurrency(self) -> int:
        """``max_concurrency`` from ``GET /gateway/bot`` (asked once; 1 if that fails)."""
        if self._identify_concurrency is None:
            try:
                _, _, limits = await self.http.get_bot_gateway()
                self._identify_concurrency = max(1, int(limits["max_concurrency"]))
            except (discord.DiscordException, KeyError, TypeError, ValueError):
                log.warning("GET /gateway/bot failed: identifying one shard at a time")
                self._identify_concurrency = 1
        return self._identify_concurrency

    def gateway_status(self) -> dict[int, ShardStatus]:
        """This process's gateway connection, as shard 0 (metrics and ``/readyz``).

        Connected once ready and while the websocket is open; the latency is discord.py's
        heartbeat latency (inf or nan before the first heartbeat is answered).
        """
        ready = self.is_ready() and not self.is_closed()
        ws = self.ws
        return {0: ShardStatus(ready and ws is not None and ws.open, self.latency)}

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
        self._warn_about_servers_not_allowed()

    async def on_guild_join(self, guild: discord.Guild) -> None:
        self._warn_if_not_allowed(guild)

    def _warn_about_servers_not_allowed(self, shown: int = 5) -> None:
        """One line for every server outside ``ALLOWED_GUILD_IDS`` (its count and the
        first few ids), not one per server: a bot in 10,000 servers would otherwise write
        thousands of lines, and block the event loop doing it, at every start."""
        allowed = self.settings.allowed_guild_ids
        if not allowed:
            return
        outside = sorted(guild.id for guild in self.guilds if guild.id not in allowed)
        if not outside:
            return
        ids = ", ".join(str(guild_id) for guild_id in outside[:shown])
        more = f" and {len(outside) - shown} more" if len(outside) > shown else ""
        log.warning(
            "The bot is in %d servers that ALLOWED_GUILD_IDS does not list (%s%s): every"
            " command there is refused. Remove the bot from them, or add their ids.",
            len(outside),
            ids,
            more,
        )

    def _warn_if_not_allowed(self, guild: discord.Guild) -> None:
        allowed = self.settings.allowed_guild_ids
        if allowed and guild.id not in allowed:
            log.warning(
                "The bot is in server %s (%d), which ALLOWED_GUILD_IDS does not list: every"
                " command there is refused. Remove the bot from it, or add the id.",
                guild.name,
                guild.id,
            )


class ShardedUpscaleBot(UpscaleBot, commands.AutoShardedBot):
    """The bot running the shards ``SHARD_IDS`` of ``SHARD_COUNT`` (all of them if unset).

    Built by :func:`~bot.frontend.build.create_bot` when ``SHARD_COUNT`` is set; several
    such processes on one PostgreSQL database form a fleet (see :mod:`bot.frontend.fleet`).
    Without ``SHARD_COUNT`` the bot is a plain :class:`UpscaleBot` with one gateway
    connection, as before.
    """

    def gateway_status(self) -> dict[int, ShardStatus]:
        """Each shard this process runs (none before they are launched)."""
        ready = self.is_ready() and not self.is_closed()
        return {
            shard_id: ShardStatus(ready and not info.is_closed(), info.latency)
            for shard_id, info in self.shards.items()
        }


def _load_item(spec: str) -> type[discord.ui.DynamicItem[Any]]:
    """The persistent item class ``module:Class`` names."""
    module, _, name = spec.partition(":")
    item = getattr(importlib.import_module(module), name)
    if not (isinstance(item, type) and issubclass(item, discord.ui.DynamicItem)):
        raise TypeError(f"{spec} is not a persistent (dynamic) item")
    return item


Interaction: TypeAlias = discord.Interaction[UpscaleBot]
"""An interaction this bot received: ``interaction.client`` is the :class:`UpscaleBot`."""
