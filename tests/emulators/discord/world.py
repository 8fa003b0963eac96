"""The emulated world: users, guilds, channels, members, roles, and their snowflakes.

:class:`World` builds the default guild ("Test Server": the ``everyone``, ``mod_role`` and
``vip_role`` roles; ``alice``, ``bob``, ``moderator`` (Manage Server), ``role_mod`` (the
Moderators role) and the bot ``me``; one text channel ``channel``; a DM ``dm_channel``)
and adds members and guilds (:meth:`World.add_guild` places a guild on a chosen shard).
Payload methods give each object as Discord's API shows it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.emulators.discord.base import EmulatorBase, EmulatorError

DISCORD_EPOCH_MS = 1_420_070_400_000
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
ALL_PERMISSIONS = (1 << 50) - 1
EVERYONE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16)  # view/send/...
MANAGE_GUILD = 1 << 5
MANAGE_MESSAGES = 1 << 13
ATTACH_FILES = 1 << 15
EMBED_LINKS = 1 << 14
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | ATTACH_FILES | EMBED_LINKS

_counter = itertools.count(1)


def snowflake(at: float | None = None) -> int:
    """A snowflake for ``at`` (Unix seconds; now by default), unique in this process."""
    ms = int((time.time() if at is None else at) * 1000) - DISCORD_EPOCH_MS
    return (ms << 22) | (next(_counter) & 0x3FFFFF)


def snowflake_time(value: int) -> float:
    return ((value >> 22) + DISCORD_EPOCH_MS) / 1000


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard that carries ``guild_id`` when the bot runs ``shard_count`` shards."""
    return (guild_id >> 22) % shard_count


def snowflake_on_shard(shard_id: int, shard_count: int) -> int:
    """A fresh snowflake (a guild id) that lands on ``shard_id`` of ``shard_count``."""
    if not 0 <= shard_id < shard_count:
        raise ValueError(f"shard {shard_id} is not in 0..{shard_count - 1}")
    ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
    ms -= (ms - shard_id) % shard_count
    return (ms << 22) | (next(_counter) & 0x3FFFFF)


def iso(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).isoformat()


@dataclass
class User:
    id: int
    name: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass
class Role:
    id: int
    name: str
    permissions: int = 0
    position: int = 1

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": True,
            "flags": 0,
        }


@dataclass
class Member:
    user: User
    roles: list[Role] = field(default_factory=list)
    permissions: int = EVERYONE_PERMISSIONS  # what the interaction says they have

    def payload(self, with_permissions: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user": self.user.payload(),
            "roles": [str(r.id) for r in self.roles],
            "joined_at": iso(1_600_000_000),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
        }
        if with_permissions:
            data["permissions"] = str(self.permissions)
        return data


@dataclass
class Channel:
    id: int
    name: str
    guild_id: int | None
    type: int = 0
    bot_permissions: int = BOT_PERMISSIONS  # the bot's permissions here (app_permissions)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    recipient: User | None = None  # for a DM the bot opened

    def payload(self, bot_id: int | None = None) -> dict[str, Any]:
        """The channel object; with ``bot_id``, an overwrite gives the bot exactly
        ``bot_permissions`` here, so discord.py's ``permissions_for(guild.me)`` agrees with
        the interactions' ``app_permissions``."""
        overwrites = []
        if bot_id is not None and self.guild_id is not None:
            overwrites.append(
                {
                    "id": str(bot_id),
                    "type": 1,  # member
                    "allow": str(self.bot_permissions),
                    "deny": str(ALL_PERMISSIONS & ~self.bot_permissions),
                }
            )
        if self.recipient is not None:
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [self.recipient.payload()],
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "name": self.name,
            "position": 0,
            "permission_overwrites": overwrites,
            "nsfw": False,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        return data


@dataclass
class Guild:
    id: int
    name: str
    roles: list[Role]
    channels: list[Channel]
    members: list[Member]
    upload_limit: int = DEFAULT_UPLOAD_LIMIT
    preferred_locale: str = "en-US"
    bot_permissions: int = BOT_PERMISSIONS  # what GET /users/@me/guilds reports

    @property
    def channel(self) -> Channel:
        """The guild's first text channel."""
        return self.channels[0]

    @property
    def everyone(self) -> Role:
        return self.roles[0]

    def member(self, name: str) -> Member:
        """The member whose user is called ``name``."""
        for member in self.members:
            if member.user.name == name:
                return member
        raise EmulatorError(f"no member {name!r} in {self.name}")

    @property
    def humans(self) -> list[Member]:
        return [m for m in self.members if not m.user.bot]

    def payload(self, bot_id: int | None = None) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "owner_id": str(self.members[0].user.id) if self.members else "1",
            "roles": [r.payload() for r in self.roles],
            "channels": [c.payload(bot_id) for c in self.channels],
            "members": [m.payload() for m in self.members],
            "member_count": len(self.members),
            "emojis": [],
            "stickers": [],
            "features": [],
            "threads": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "voice_states": [],
            "presences": [],
            "large": False,
            "unavailable": False,
            "premium_tier": 0,
            "mfa_level": 0,
            "verification_level": 0,
            "explicit_content_filter": 0,
            "default_message_notifications": 0,
            "afk_timeout": 300,
            "system_channel_flags": 0,
            "preferred_locale": self.preferred_locale,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": iso(1_600_000_000),
        }


class World(EmulatorBase):
    """The guilds, channels and users the bot can see, and the application it belongs to."""

    def __init__(self, *, token: str) -> None:
        super().__init__(token=token)
        self.application_id = snowflake()
        self.bot_user = User(snowflake(), "UpscaleBot", bot=True)
        self._build_world()

    def _build_world(self) -> None:
        gid = snowflake()
        self.everyone = Role(gid, "@everyone", EVERYONE_PERMISSIONS, position=0)
        self.mod_role = Role(snowflake(), "Moderators", 0)
        self.vip_role = Role(snowflake(), "VIP", 0)
        self.channel = Channel(snowflake(), "general", gid)
        self.alice = Member(User(snowflake(), "alice"), [self.everyone])
        self.bob = Member(User(snowflake(), "bob"), [self.everyone])
        self.moderator = Member(
            User(snowflake(), "mod"),
            [self.everyone],
            permissions=EVERYONE_PERMISSIONS | MANAGE_GUILD,
        )
        self.role_mod = Member(User(snowflake(), "rolemod"), [self.everyone, self.mod_role])
        self.me = Member(self.bot_user, [self.everyone], permissions=BOT_PERMISSIONS)
        self.guild = Guild(
            gid,
            "Test Server",
            [self.everyone, self.mod_role, self.vip_role],
            [self.channel],
            [self.moderator, self.alice, self.bob, self.role_mod, self.me],
        )
        self.dm_channel = Channel(snowflake(), "dm", None, type=1)
        self.channels = {self.channel.id: self.channel, self.dm_channel.id: self.dm_channel}
        self.guilds: list[Guild] = [self.guild]
        self.owner: User = self.moderator.user  # the application's owner

    def add_member(
        self, name: str, roles: list[Role] | None = None, *, guild: Guild | None = None
    ) -> Member:
        target = guild or self.guild
        member = Member(User(snowflake(), name), [target.everyone, *(roles or [])])
        target.members.append(member)
        return member

    def add_guild(
        self,
        name: str = "Another Server",
        *,
        shard: tuple[int, int] | None = None,
        locale: str = "en-US",
        members: Sequence[str] = ("carol", "dave"),
        channel_name: str = "general",
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
    ) -> Guild:
        """A guild the bot is in, with one text channel, ``members`` and the bot.

        ``shard=(shard_id, shard_count)`` picks an id on that shard. Add guilds before
        the bot connects, or announce them with ``announce_guild`` (the gateway's).
        """
        gid = snowflake() if shard is None else snowflake_on_shard(*shard)
        everyone = Role(gid, "@everyone", EVERYONE_PERMISSIONS, position=0)
        channel = Channel(snowflake(), channel_name, gid)
        people = [Member(User(snowflake(), n), [everyone]) for n in members]
        me = Member(self.bot_user, [everyone], permissions=BOT_PERMISSIONS)
        guild = Guild(
            gid,
            name,
            [everyone],
            [channel],
            [*people, me],
            upload_limit=upload_limit,
            preferred_locale=locale,
        )
        self.guilds.append(guild)
        self.channels[channel.id] = channel
        return guild

    def guild_of(self, channel: Channel) -> Guild | None:
        return next((g for g in self.guilds if g.id == channel.guild_id), None)

    def guilds_on(self, shard_id: int, shard_count: int) -> list[Guild]:
        return [g for g in self.guilds if shard_of(g.id, shard_count) == shard_id]

    def users(self) -> dict[int, User]:
        """Every user the bot could DM: the members of its guilds and the owner."""
        users = {m.user.id: m.user for g in self.guilds for m in g.members}
        users[self.owner.id] = self.owner
        return users

    def default_member(self, channel: Channel) -> Member | None:
        """Who acts in ``channel`` unless a test says: alice, another guild's first
        member, nobody in a DM."""
        guild = self.guild_of(channel)
        if guild is None:
            return None
        return self.alice if guild is self.guild else guild.humans[0]

    def channel_messages(self, channel: Channel | None = None) -> list[dict[str, Any]]:
        """Messages currently in the channel, oldest first."""
        chan = channel or self.channel
        return sorted(chan.messages.values(), key=lambda m: int(m["id"]))
