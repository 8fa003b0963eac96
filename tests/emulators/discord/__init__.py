"""A Discord emulator on 127.0.0.1 for the real discord.py client (docs/discord-emulation.md).

It serves the gateway (HELLO, heartbeats, IDENTIFY -> READY + GUILD_CREATE, RESUME, forced
reconnects), the REST routes the bot uses (login, command sync, interaction callbacks,
webhook edits and followups, channel messages) and a CDN for attachment bytes. Tests
inject interactions and read back what the bot did::

    async with DiscordEmulator() as discord_emu:
        point_discord_at(discord_emu)  # discord.py's REST and gateway go to the emulator
        it = await discord_emu.slash("upscale", {"image": discord_emu.attachment(data, "a.png")})
        message = await it.final()

It is built in parts, like the bot, each a module with its own docstring:

* :mod:`.world`: users, guilds, channels, members, roles, snowflakes;
* :mod:`.gateway`: sessions, IDENTIFY and RESUME, dispatch, shards;
* :mod:`.cdn`: attachment bytes at signed, expiring URLs (slow, held or gone on demand);
* :mod:`.rest`: routing, auth, faults, messages, history, DMs, command sync;
* :mod:`.interactions`: injection, callbacks, webhooks, followups, interaction tokens
  (lifetime, :meth:`~.Interactions.kill_token`, :meth:`~.Interactions.dead_token_calls`),
  :class:`Injected`;
* :mod:`.spec`: the request bodies Discord's OpenAPI spec allows, checked on every message
  route (a violation fails the test when the emulator stops);
* :mod:`.emulator`: :class:`DiscordEmulator`, all of them served together.
"""

from tests.emulators.discord.base import EmulatorError
from tests.emulators.discord.cdn import ATTACHMENT_URL_LIFETIME, Blob, Cdn
from tests.emulators.discord.emulator import DiscordEmulator, point_discord_at
from tests.emulators.discord.gateway import (
    IDENTIFY_INTERVAL,
    SESSION_START_TOTAL,
    Gateway,
    GatewaySession,
    IdentifyAttempt,
)
from tests.emulators.discord.interactions import TOKEN_LIFETIME, Injected, Interactions, find_button
from tests.emulators.discord.rest import (
    APPLY_THEN_HANG,
    HANG,
    HISTORY_DEFAULT_LIMIT,
    NONCE_WINDOW,
    Call,
    Fault,
    Rest,
)
from tests.emulators.discord.world import (
    ALL_PERMISSIONS,
    ATTACH_FILES,
    BOT_PERMISSIONS,
    DEFAULT_UPLOAD_LIMIT,
    DISCORD_EPOCH_MS,
    EMBED_LINKS,
    EVERYONE_PERMISSIONS,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    Channel,
    Guild,
    Member,
    Role,
    User,
    World,
    iso,
    shard_of,
    snowflake,
    snowflake_on_shard,
    snowflake_time,
)
from tests.emulators.hold import Hold

__all__ = [
    "ALL_PERMISSIONS",
    "APPLY_THEN_HANG",
    "ATTACHMENT_URL_LIFETIME",
    "ATTACH_FILES",
    "BOT_PERMISSIONS",
    "DEFAULT_UPLOAD_LIMIT",
    "DISCORD_EPOCH_MS",
    "EMBED_LINKS",
    "EVERYONE_PERMISSIONS",
    "HANG",
    "HISTORY_DEFAULT_LIMIT",
    "IDENTIFY_INTERVAL",
    "MANAGE_GUILD",
    "MANAGE_MESSAGES",
    "NONCE_WINDOW",
    "SESSION_START_TOTAL",
    "TOKEN_LIFETIME",
    "Blob",
    "Call",
    "Cdn",
    "Channel",
    "DiscordEmulator",
    "EmulatorError",
    "Fault",
    "Gateway",
    "GatewaySession",
    "Guild",
    "Hold",
    "IdentifyAttempt",
    "Injected",
    "Interactions",
    "Member",
    "Rest",
    "Role",
    "User",
    "World",
    "find_button",
    "iso",
    "point_discord_at",
    "shard_of",
    "snowflake",
    "snowflake_on_shard",
    "snowflake_time",
]
