"""A Discord emulator on 127.0.0.1 for the real discord.py client (docs/discord-emulation.md).

It serves the gateway (HELLO, heartbeats, IDENTIFY -> READY + GUILD_CREATE, RESUME, forced
reconnects), the REST routes the bot uses (login, command sync, interaction callbacks,
webhook edits and followups, channel messages) and a CDN for attachment bytes. Tests
inject interactions and read back what the bot did::

    async with DiscordEmulator() as discord_emu:
        point_discord_at(discord_emu)  # discord.py's REST and gateway go to the emulator
        it = await discord_emu.slash("upscale", {"image": discord_emu.attachment(data, "a.png")})
        message = await it.final()

Realism: an ack later than ``ack_deadline`` s gets 404 code 10062; webhook calls after
``token_lifetime`` s (counted from the interaction's snowflake time, as Discord does) get
401 code 50027; uploads over the interaction's ``attachment_size_limit`` get 413 code
40005; :meth:`fail` injects 429 (with ``Via`` and ``retry_after``) or 5xx answers; a
``latency`` knob delays every REST answer. Every REST call is recorded in ``calls``; calls
to routes it does not implement are answered 404 and listed in ``unimplemented``.
Injected interactions are validated against the commands the bot registered.

Guilds and shards: :meth:`DiscordEmulator.add_guild` adds guilds (ids placed on a chosen
shard: ``(guild_id >> 22) % shard_count``) besides the default ``guild``. IDENTIFY may
carry ``shard: [id, count]`` (none means ``[0, 1]``); READY echoes it and lists, like the
GUILD_CREATEs after it, only that shard's guilds; guild events (interactions included) go
only to the connection of the shard owning the guild, DM events to shard 0. Like Discord,
IDENTIFYs in one concurrency bucket (``shard_id % max_concurrency``) less than
``identify_interval`` (5 s) apart are refused with op 9 (``d: false``; counted in
``identify_refusals``). Stricter than Discord (which lets two sessions share a shard), a
second session on a shard that already has a live connection is refused the same way
(``duplicate_session_refusals``); discord.py then identifies again after its
``before_identify_hook`` and gets the shard once the old connection is gone. Every
attempt is in ``identify_log``; :meth:`DiscordEmulator.connected_shards` lists live shards.

Owner tooling: ``reject_token`` (401 on REST, 4004 on the gateway), ``GET
/users/@me/guilds`` (``permissions`` from :attr:`Guild.bot_permissions`), message history,
``POST /users/@me/channels`` and DMs (``dms_sent``, :meth:`DiscordEmulator.dms_to`;
users in ``closed_dms`` refuse them with 50007), the application ``owner``.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import discord
import yarl
from aiohttp import WSMsgType, web
from PIL import Image

DISCORD_EPOCH_MS = 1_420_070_400_000
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
ALL_PERMISSIONS = (1 << 50) - 1
EVERYONE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16)  # view/send/...
MANAGE_GUILD = 1 << 5
ATTACH_FILES = 1 << 15
EMBED_LINKS = 1 << 14
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | ATTACH_FILES | EMBED_LINKS
HANG = 0  # a fault "status" that makes the call never answer
APPLY_THEN_HANG = -1  # a fault "status": the call takes effect, but its answer never comes
IDENTIFY_INTERVAL = 5.0  # seconds between IDENTIFYs in one concurrency bucket
SESSION_START_TOTAL = 1000  # session starts allowed per day

_counter = itertools.count(1)


def point_discord_at(emulator: DiscordEmulator | str, gateway_url: str | None = None) -> None:
    """Send discord.py's REST and gateway traffic (process-wide) to the emulator.

    discord.py keeps both addresses in class attributes; tests set them here so the bot's
    own code has no branch for an emulator. Accepts an emulator or its two URLs.
    """
    if isinstance(emulator, str):
        api_base, gateway = emulator, gateway_url or ""
    else:
        api_base, gateway = emulator.api_base, emulator.gateway_url
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)


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


class EmulatorError(AssertionError):
    """The bot, or a test, used the emulator in a way Discord would not accept."""


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


@dataclass
class GatewaySession:
    """One identified gateway session (a shard), and its connection while live."""

    session_id: str
    shard_id: int
    shard_count: int
    ws: web.WebSocketResponse | None
    seq: int = 0

    @property
    def live(self) -> bool:
        return self.ws is not None and not self.ws.closed


@dataclass
class IdentifyAttempt:
    """An IDENTIFY the emulator received and what became of it."""

    at: float  # time.monotonic()
    shard_id: int
    shard_count: int
    outcome: str  # "ready", "rate_limited" (same bucket within 5 s) or "duplicate"


@dataclass
class Call:
    """One REST request the bot made."""

    method: str
    path: str
    json: Any
    files: list[tuple[str, bytes]]
    status: int
    at: float


@dataclass
class Fault:
    pattern: re.Pattern[str]
    method: str | None
    status: int
    times: int
    retry_after: float
    files_only: bool = False


@dataclass
class Injected:
    """An interaction the test sent, and what the bot answered."""

    emulator: DiscordEmulator
    id: int
    token: str
    type: int
    channel: Channel
    user: User
    upload_limit: int
    sent_at: float
    ack_type: int | None = None
    ack_at: float | None = None
    ack_status: int | None = None
    original: dict[str, Any] | None = None  # the @original message, as last edited
    edits: list[dict[str, Any]] = field(default_factory=list)  # every version of @original
    followups: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False
    message_id: int | None = None  # for a component click: the message carrying it

    @property
    def ack_latency(self) -> float | None:
        return None if self.ack_at is None else self.ack_at - self.sent_at

    async def acked(self, timeout: float = 5.0) -> int:
        await self.emulator.wait_until(lambda: self.ack_type is not None, timeout)
        assert self.ack_type is not None
        return self.ack_type

    async def wait(self, predicate: Callable[[Injected], bool], timeout: float = 15.0) -> None:
        await self.emulator.wait_until(lambda: predicate(self), timeout)

    async def final(
        self, timeout: float = 15.0, progress: tuple[str, ...] = ("⏳", "⚙️", "🔄", "⏸️")
    ) -> dict[str, Any]:
        """The @original message once it is neither empty ("thinking") nor progress."""

        def done() -> bool:
            msg = self.original
            if msg is None:
                return False
            if msg.get("attachments") or msg.get("embeds"):
                return True
            content = msg.get("content") or ""
            return bool(content) and not content.startswith(progress)

        await self.wait(lambda _: done(), timeout)
        assert self.original is not None
        return self.original

    def file(self, message: dict[str, Any] | None = None) -> tuple[str, bytes]:
        """The first file uploaded with ``message`` (default: the final original)."""
        msg = message or self.original
        assert msg is not None and msg.get("_files"), "no file in the message"
        return msg["_files"][0]


class DiscordEmulator:
    """The emulator; see the module docstring."""

    def __init__(self, *, token: str = "emulated-bot-token") -> None:
        self.token = token
        self.application_id = snowflake()
        self.bot_user = User(snowflake(), "UpscaleBot", bot=True)
        self.ack_deadline = 3.0
        self.token_lifetime = 15 * 60.0
        self.latency = 0.0
        self.calls: list[Call] = []
        self.unimplemented: list[str] = []
        self.hung: list[str] = []
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.interactions: dict[int, Injected] = {}
        self._by_token: dict[str, Injected] = {}
        self._faults: list[Fault] = []
        self._blobs: dict[str, _Blob] = {}
        self.attachment_url_lifetime = 86_400.0  # seconds a CDN URL stays valid once made
        self._changed = asyncio.Condition()
        self.sessions: dict[str, GatewaySession] = {}
        self._pending: dict[int, list[dict[str, Any]]] = {}  # per shard, until it resumes
        self._sockets: set[web.WebSocketResponse] = set()
        self.identifies = 0  # admitted IDENTIFYs (sessions started)
        self.resumes = 0
        self.shard_count = 1  # as the latest admitted IDENTIFY said
        self.recommended_shards = 1  # "shards" in GET /gateway/bot
        self.max_concurrency = 1
        self.identify_interval = IDENTIFY_INTERVAL
        self.identify_log: list[IdentifyAttempt] = []
        self.identify_refusals = 0
        self.duplicate_session_refusals = 0
        self._bucket_last: dict[int, float] = {}
        self.reject_token = False
        self.dm_channels: dict[int, Channel] = {}  # user id -> the DM the bot opened
        self.dms_sent: list[tuple[int, dict[str, Any]]] = []  # (user id, message)
        self.closed_dms: set[int] = set()  # users who refuse DMs from the bot
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._ws_tasks: set[asyncio.Task[None]] = set()
        self._build_world()

    # -- world -------------------------------------------------------------------------

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
        the bot connects, or announce them with :meth:`announce_guild`.
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

    async def announce_guild(self, guild: Guild) -> None:
        """Send GUILD_CREATE for ``guild`` (the bot joined it) to the shard owning it."""
        await self.dispatch("GUILD_CREATE", guild.payload(self.bot_user.id))

    def guild_of(self, channel: Channel) -> Guild | None:
        return next((g for g in self.guilds if g.id == channel.guild_id), None)

    def guilds_on(self, shard_id: int, shard_count: int) -> list[Guild]:
        return [g for g in self.guilds if shard_of(g.id, shard_count) == shard_id]

    def _users(self) -> dict[int, User]:
        users = {m.user.id: m.user for g in self.guilds for m in g.members}
        users[self.owner.id] = self.owner
        return users

    async def set_bot_permissions(self, channel: Channel, permissions: int) -> None:
        """Give the bot exactly ``permissions`` in ``channel``, as a server admin would.

        Interactions there carry them as ``app_permissions``, and the bot's cache learns
        them from a CHANNEL_UPDATE (so ``permissions_for(guild.me)`` agrees).
        """
        channel.bot_permissions = permissions
        if channel.guild_id is not None:
            await self.dispatch("CHANNEL_UPDATE", channel.payload(self.bot_user.id))

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._middleware])
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        for task in list(self._ws_tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def media_origins(self) -> frozenset[str]:
        """Where the emulator serves attachment bytes (the bot's allowed media origins)."""
        return frozenset({self.base_url})

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/gateway"

    # -- waiting -----------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    # -- gateway -----------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        session: GatewaySession | None = None
        try:
            await ws.send_json({"op": 10, "d": {"heartbeat_interval": 41_250}})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op = payload.get("op")
                if op == 1:
                    await ws.send_json({"op": 11})
                elif op == 2:
                    session = await self._identify(ws, payload.get("d") or {}) or session
                elif op == 6:
                    session = await self._resume(ws, payload.get("d") or {}) or session
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
            await self._notify()
        return ws

    async def _identify(
        self, ws: web.WebSocketResponse, data: dict[str, Any]
    ) -> GatewaySession | None:
        if data.get("token") != self.token or self.reject_token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        shard_id, shard_count = (int(x) for x in (data.get("shard") or (0, 1)))
        if not 0 <= shard_id < shard_count:
            await ws.close(code=4010, message=b"Invalid shard.")
            return None
        now = time.monotonic()
        bucket = shard_id % self.max_concurrency
        last = self._bucket_last.get(bucket)
        outcome = "ready"
        if last is not None and now - last < self.identify_interval:
            outcome = "rate_limited"
            self.identify_refusals += 1
        elif self._live_session(shard_id) is not None:
            outcome = "duplicate"
            self.duplicate_session_refusals += 1
        self.identify_log.append(IdentifyAttempt(now, shard_id, shard_count, outcome))
        if outcome != "ready":
            await ws.send_json({"op": 9, "d": False})
            await self._notify()
            return None
        self._bucket_last[bucket] = now
        self.identifies += 1
        self.shard_count = shard_count
        session = GatewaySession(secrets.token_hex(16), shard_id, shard_count, ws)
        self.sessions[session.session_id] = session
        await self._send_ready(session)
        await self._notify()
        return session

    async def _resume(
        self, ws: web.WebSocketResponse, data: dict[str, Any]
    ) -> GatewaySession | None:
        session = self.sessions.get(data.get("session_id") or "")
        live = None if session is None else self._live_session(session.shard_id)
        if (
            data.get("token") != self.token
            or session is None
            or (live is not None and live is not session)
        ):
            await ws.send_json({"op": 9, "d": False})
            return None
        self.resumes += 1
        session.ws = ws
        await self._send_event(session, "RESUMED", {})
        for event in self._pending.pop(session.shard_id, []):
            await self._send_event(session, event["t"], event["d"])
        await self._notify()
        return session

    async def _send_ready(self, session: GatewaySession) -> None:
        guilds = self.guilds_on(session.shard_id, session.shard_count)
        await self._send_event(
            session,
            "READY",
            {
                "v": 10,
                "user": self.bot_user.payload(),
                "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
                "session_id": session.session_id,
                "resume_gateway_url": self.gateway_url,
                "application": {"id": str(self.application_id), "flags": 0},
                "private_channels": [],
                "relationships": [],
                "shard": [session.shard_id, session.shard_count],
            },
        )
        for guild in guilds:
            await self._send_event(session, "GUILD_CREATE", guild.payload(self.bot_user.id))

    async def _send_event(self, session: GatewaySession, name: str, data: Any) -> None:
        assert session.ws is not None
        session.seq += 1
        await session.ws.send_json({"op": 0, "t": name, "s": session.seq, "d": data})

    def _live_session(self, shard_id: int) -> GatewaySession | None:
        for session in self.sessions.values():
            if session.shard_id == shard_id and session.live:
                return session
        return None

    def connected_shards(self) -> list[int]:
        """Shard ids with a live, identified (or resumed) connection."""
        return sorted({s.shard_id for s in self.sessions.values() if s.live})

    def shard_for(self, name: str, data: Any) -> int:
        """The shard an event goes to: its guild's, or 0 for events outside guilds."""
        guild_id = None
        if isinstance(data, dict):
            key = "id" if name in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE") else "guild_id"
            guild_id = data.get(key)
        return 0 if guild_id is None else shard_of(int(guild_id), self.shard_count)

    @property
    def _pending_events(self) -> list[dict[str, Any]]:
        """Events held for shards that are reconnecting, every shard together."""
        return [event for events in self._pending.values() for event in events]

    @property
    def _ws(self) -> web.WebSocketResponse | None:
        session = self._live_session(0)
        return None if session is None else session.ws

    async def dispatch(self, name: str, data: Any) -> None:
        """Send an event to the shard it belongs to, or hold it until that shard resumes."""
        shard_id = self.shard_for(name, data)
        session = self._live_session(shard_id)
        if session is None:
            self._pending.setdefault(shard_id, []).append({"t": name, "d": data})
            return
        await self._send_event(session, name, data)

    async def force_reconnect(self, shard_id: int = 0) -> None:
        """Ask a shard to reconnect (op 7); it resumes on a new connection."""
        session = self._live_session(shard_id)
        assert session is not None and session.ws is not None, "the shard is not connected"
        ws, session.ws = session.ws, None
        await ws.send_json({"op": 7, "d": None})

    async def wait_connected(
        self, timeout: float = 10.0, shards: Iterable[int] | None = None
    ) -> None:
        """Wait until a shard (or each of ``shards``) has a live session."""
        wanted = None if shards is None else set(shards)
        await self.wait_until(
            lambda: (
                bool(self.connected_shards())
                if wanted is None
                else wanted <= set(self.connected_shards())
            ),
            timeout,
        )

    # -- REST --------------------------------------------------------------------------

    def fail(
        self,
        path_regex: str,
        status: int = 500,
        *,
        times: int = 1,
        method: str | None = None,
        retry_after: float = 0.05,
        files_only: bool = False,
    ) -> None:
        """The next ``times`` REST calls matching ``path_regex`` answer ``status``.

        ``status=HANG`` (0) makes them never answer (listed in ``hung``); ``files_only``
        matches only requests that upload files (deliveries, not progress edits).
        """
        self._faults.append(
            Fault(re.compile(path_regex), method, status, times, retry_after, files_only)
        )

    def clear_faults(self) -> None:
        """Forget every fault not yet used."""
        self._faults.clear()

    def _take_fault(self, method: str, path: str, has_files: bool = False) -> Fault | None:
        for fault in self._faults:
            if fault.files_only and not has_files:
                continue
            matches = fault.times > 0 and fault.pattern.search(path)
            if matches and fault.method in (None, method):
                fault.times -= 1
                return fault
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.latency and request.path.startswith("/api/"):
            await asyncio.sleep(self.latency)
        return await handler(request)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
        if request.content_type.startswith("multipart/"):
            files: list[tuple[str, bytes]] = []
            body: Any = None
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    files.append((part.filename or "file", bytes(await part.read())))  # type: ignore[union-attr]
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), []

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        if path.startswith("/cdn/"):
            response = self._cdn(request)
            self.calls.append(Call(method, path, None, [], response.status, time.monotonic()))
            await self._notify()
            return response
        body, files = await self._read_body(request)
        fault = self._take_fault(method, path, bool(files))
        if fault is not None and fault.status == HANG:
            self.hung.append(f"{method} {path}")
            await self._notify()
            await asyncio.Event().wait()  # never answers; ends when the client goes away
        if fault is not None and fault.status != APPLY_THEN_HANG:
            response = self._fault_response(fault)
        else:
            try:
                response = await self._route(request, method, path, body, files)
            except _Reply as reply:
                response = reply.response
        self.calls.append(Call(method, path, body, files, response.status, time.monotonic()))
        await self._notify()
        if fault is not None and fault.status == APPLY_THEN_HANG:
            self.hung.append(f"{method} {path}")
            await asyncio.Event().wait()  # done, but the client never hears so
        return response

    def _fault_response(self, fault: Fault) -> web.Response:
        if fault.status == 429:
            return _json(
                {"message": "You are being rate limited.", "retry_after": fault.retry_after,
                 "global": False},
                status=429,
                headers={"Via": "1.1 google", "Retry-After": str(fault.retry_after)},
            )  # fmt: skip
        if fault.status == 403:
            return _json({"message": "Missing Permissions", "code": 50013}, status=403)
        return _json({"message": "Internal Server Error", "code": 0}, status=fault.status)

    async def _route(
        self,
        request: web.Request,
        method: str,
        path: str,
        body: Any,
        files: list[tuple[str, bytes]],
    ) -> web.Response:
        api = path.removeprefix("/api/v10")
        app = str(self.application_id)
        if not api.startswith(("/interactions/", "/webhooks/")):
            self._check_auth(request)
        if method == "GET" and api == "/users/@me":
            return _json(self.bot_user.payload())
        if method == "GET" and api == "/oauth2/applications/@me":
            return _json(self._application())
        if method == "GET" and api == "/gateway":
            return _json({"url": self.gateway_url})
        if method == "GET" and api == "/gateway/bot":
            return _json(self._gateway_bot())
        if method == "GET" and api == "/users/@me/guilds":
            return _json(self._my_guilds(request.query))
        if method == "POST" and api == "/users/@me/channels":
            return self._open_dm(body)
        if m := re.fullmatch(rf"/applications/{app}/commands", api):
            return self._sync_commands(method, body, None)
        if m := re.fullmatch(rf"/applications/{app}/guilds/(\d+)/commands", api):
            return self._sync_commands(method, body, int(m[1]))
        if m := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", api):
            return await self._callback(int(m[1]), m[2], body, files)
        if m := re.fullmatch(rf"/webhooks/{app}/([^/]+)/messages/(@original|\d+)", api):
            return self._webhook_message(method, m[1], m[2], body, files)
        if (m := re.fullmatch(rf"/webhooks/{app}/([^/]+)", api)) and method == "POST":
            return self._followup(m[1], body, files)
        if m := re.fullmatch(r"/channels/(\d+)/messages", api):
            if method == "POST":
                return self._channel_post(int(m[1]), body, files)
            if method == "GET":
                return _json(self._history(self._channel(int(m[1])), request.query))
        if (m := re.fullmatch(r"/channels/(\d+)", api)) and method == "GET":
            return _json(self._channel(int(m[1])).payload(self.bot_user.id))
        if m := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", api):
            return self._channel_message(method, int(m[1]), int(m[2]), body, files)
        self.unimplemented.append(f"{method} {path}")
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    # -- GET /users/@me/guilds (start-up checks) -------------------------------------

    def _check_auth(self, request: web.Request) -> None:
        if self.reject_token or request.headers.get("Authorization") != f"Bot {self.token}":
            raise _Reply(_json({"message": "401: Unauthorized", "code": 0}, status=401))

    def _application(self) -> dict[str, Any]:
        return {
            "id": str(self.application_id),
            "name": "UpscaleBot",
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.owner.payload(),
            "verify_key": "0" * 64,
            "flags": 0,
            "interactions_endpoint_url": None,
            "team": None,
            "summary": "",
        }

    def _gateway_bot(self) -> dict[str, Any]:
        return {
            "url": self.gateway_url,
            "shards": self.recommended_shards,
            "session_start_limit": {
                "total": SESSION_START_TOTAL,
                "remaining": max(SESSION_START_TOTAL - self.identifies, 0),
                "reset_after": 86_400_000,
                "max_concurrency": self.max_concurrency,
            },
        }

    def _my_guilds(self, query: Any) -> list[dict[str, Any]]:
        """GET /users/@me/guilds: the bot's guilds by id, with ``before``/``after``/``limit``."""
        guilds = sorted(self.guilds, key=lambda g: g.id)
        if "after" in query:
            guilds = [g for g in guilds if g.id > int(query["after"])]
        if "before" in query:
            guilds = [g for g in guilds if g.id < int(query["before"])]
            guilds = guilds[-int(query.get("limit", "200")) :]
        else:
            guilds = guilds[: int(query.get("limit", "200"))]
        out = []
        for guild in guilds:
            item: dict[str, Any] = {
                "id": str(guild.id),
                "name": guild.name,
                "icon": None,
                "banner": None,
                "owner": False,
                "permissions": str(guild.bot_permissions),
                "features": [],
            }
            if query.get("with_counts") == "true":
                item["approximate_member_count"] = len(guild.members)
                item["approximate_presence_count"] = 0
            out.append(item)
        return out

    def _open_dm(self, body: Any) -> web.Response:
        """POST /users/@me/channels: the bot's DM channel with a user (made once)."""
        try:
            user_id = int((body or {}).get("recipient_id"))
        except (TypeError, ValueError):
            user_id = 0
        user = self._users().get(user_id)
        if user is None:
            return _json({"message": "Invalid Recipient(s)", "code": 50033}, status=400)
        channel = self.dm_channels.get(user_id)
        if channel is None:
            channel = Channel(snowflake(), f"dm-{user.name}", None, type=1, recipient=user)
            self.dm_channels[user_id] = channel
            self.channels[channel.id] = channel
        return _json(channel.payload())

    def dms_to(self, user: User | Member) -> list[dict[str, Any]]:
        """Messages the bot sent to ``user`` by DM, oldest first."""
        uid = user.user.id if isinstance(user, Member) else user.id
        return [message for target, message in self.dms_sent if target == uid]

    def _history(self, channel: Channel, query: Any) -> list[dict[str, Any]]:
        """GET /channels/{id}/messages: newest first, ``limit`` (1-100), ``before``,
        ``after`` (then the oldest ones after it, still newest first)."""
        limit = max(1, min(100, int(query.get("limit", "50"))))
        messages = sorted(channel.messages.values(), key=lambda x: int(x["id"]))
        if "before" in query:
            messages = [x for x in messages if int(x["id"]) < int(query["before"])]
        if "after" in query:
            messages = [x for x in messages if int(x["id"]) > int(query["after"])][:limit]
        return [_public(x) for x in reversed(messages[-limit:])]

    def _sync_commands(self, method: str, body: Any, guild_id: int | None) -> web.Response:
        if method == "GET":
            stored = (
                self.global_commands if guild_id is None else self.guild_commands.get(guild_id, [])
            )
            return _json(stored)
        if method != "PUT":
            self.unimplemented.append(f"{method} commands")
            return _json({"message": "405"}, status=405)
        stored = []
        for command in body:
            saved = {
                "description": "",
                "options": [],
                **command,
                "id": str(snowflake()),
                "application_id": str(self.application_id),
                "version": str(snowflake()),
                "type": command.get("type", 1),
            }
            if guild_id is not None:
                saved["guild_id"] = str(guild_id)
            stored.append(saved)
        if guild_id is None:
            self.global_commands = stored
        else:
            self.guild_commands[guild_id] = stored
        return _json(stored)

    def registered(self, name: str, kind: int = 1, guild: Guild | None = None) -> dict[str, Any]:
        """The command the bot registered under ``name`` (that guild's commands first)."""
        gid = (guild or self.guild).id
        for command in [*self.guild_commands.get(gid, []), *self.global_commands]:
            if command["name"] == name and command.get("type", 1) == kind:
                return command
        raise EmulatorError(f"the bot registered no command {name!r} of type {kind}")

    # -- interactions: responses ---------------------------------------------------------

    def _interaction(self, token: str) -> Injected:
        it = self._by_token.get(token)
        if it is None:
            raise _Reply(_json({"message": "Unknown Webhook", "code": 10015}, status=404))
        return it

    def _check_token_alive(self, it: Injected) -> None:
        if time.time() - snowflake_time(it.id) > self.token_lifetime:
            raise _Reply(_json({"message": "Invalid Webhook Token", "code": 50027}, status=401))

    def _check_upload(self, files: list[tuple[str, bytes]], limit: int) -> None:
        for _, data in files:
            if len(data) > limit:
                raise _Reply(
                    _json({"message": "Request entity too large", "code": 40005}, status=413)
                )

    async def _callback(
        self, interaction_id: int, token: str, body: Any, files: list[tuple[str, bytes]]
    ) -> web.Response:
        it = self.interactions.get(interaction_id)
        if it is None or it.token != token:
            return _json({"message": "Unknown interaction", "code": 10062}, status=404)
        if it.ack_type is not None:
            return _json(
                {"message": "Interaction has already been acknowledged.", "code": 40060},
                status=400,
            )
        if time.monotonic() - it.sent_at > self.ack_deadline:
            it.ack_status = 404
            return _json({"message": "Unknown interaction", "code": 10062}, status=404)
        self._check_upload(files, it.upload_limit)
        kind = int(body["type"])
        it.ack_type, it.ack_at, it.ack_status = kind, time.monotonic(), 200
        data = body.get("data") or {}
        message: dict[str, Any] | None = None
        if kind == 4:  # CHANNEL_MESSAGE_WITH_SOURCE
            message = self._new_message(it.channel, data, files, interaction=it)
            it.original = message
            it.edits.append(message)
        elif kind == 5:  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
            message = self._new_message(
                it.channel, {"content": "", "flags": data.get("flags", 0)}, [], interaction=it
            )
            message["flags"] = (data.get("flags") or 0) | 128  # LOADING
            it.original = message
        elif kind in (6, 7) and it.message_id is not None:
            # DEFERRED_UPDATE_MESSAGE / UPDATE_MESSAGE: @original is the clicked message.
            target = it.channel.messages.get(it.message_id)
            if target is None:
                return _json({"message": "Unknown Message", "code": 10008}, status=404)
            if kind == 7:
                target = self._apply_edit(target, data, files)
                it.channel.messages[it.message_id] = target
                it.edits.append(target)
                message = target
            it.original = target
        return _json(
            {
                "interaction": {
                    "id": str(it.id),
                    "type": it.type,
                    "response_message_id": message["id"] if message else None,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool((data.get("flags") or 0) & 64),
                },
                "resource": {"type": kind, **({"message": _public(message)} if message else {})},
            }
        )

    def _webhook_message(
        self,
        method: str,
        token: str,
        which: str,
        body: Any,
        files: list[tuple[str, bytes]],
    ) -> web.Response:
        it = self._interaction(token)
        self._check_token_alive(it)
        if it.original is not None and which == str(it.original["id"]):
            which = "@original"  # the original response by its id, as Discord allows
        if which == "@original":
            if it.original is None or it.deleted:
                return _json({"message": "Unknown Message", "code": 10008}, status=404)
            target = it.original
        else:
            found = [f for f in it.followups if f["id"] == which]
            if not found:
                return _json({"message": "Unknown Message", "code": 10008}, status=404)
            target = found[0]
        if method == "GET":
            return _json(_public(target))
        if method == "DELETE":
            if which == "@original":
                it.deleted = True
            it.channel.messages.pop(int(target["id"]), None)
            return web.Response(status=204)
        if method == "PATCH":
            self._check_upload(files, it.upload_limit)
            updated = self._apply_edit(target, body or {}, files)
            if which == "@original":
                it.original = updated
                it.edits.append(updated)
            if int(updated["id"]) in it.channel.messages:  # ephemeral messages are not there
                it.channel.messages[int(updated["id"])] = updated
            return _json(_public(updated))
        self.unimplemented.append(f"{method} webhook message")
        return _json({"message": "405"}, status=405)

    def _followup(self, token: str, body: Any, files: list[tuple[str, bytes]]) -> web.Response:
        it = self._interaction(token)
        self._check_token_alive(it)
        self._check_upload(files, it.upload_limit)
        message = self._new_message(it.channel, body or {}, files, interaction=it)
        it.followups.append(message)
        return _json(_public(message))

    # -- channel messages --------------------------------------------------------------

    def _channel(self, channel_id: int) -> Channel:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise _Reply(_json({"message": "Unknown Channel", "code": 10003}, status=404))
        return channel

    def _channel_post(
        self, channel_id: int, body: Any, files: list[tuple[str, bytes]]
    ) -> web.Response:
        channel = self._channel(channel_id)
        if channel.recipient is not None and channel.recipient.id in self.closed_dms:
            return _json(
                {"message": "Cannot send messages to this user", "code": 50007}, status=403
            )
        if files and not channel.bot_permissions & ATTACH_FILES:
            return _json({"message": "Missing Permissions", "code": 50013}, status=403)
        guild = self.guild_of(channel)
        self._check_upload(files, DEFAULT_UPLOAD_LIMIT if guild is None else guild.upload_limit)
        message = self._new_message(channel, body or {}, files)
        if channel.recipient is not None:
            self.dms_sent.append((channel.recipient.id, message))
        return _json(_public(message))

    def _channel_message(
        self,
        method: str,
        channel_id: int,
        message_id: int,
        body: Any,
        files: list[tuple[str, bytes]],
    ) -> web.Response:
        channel = self._channel(channel_id)
        message = channel.messages.get(message_id)
        if message is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        if method == "GET":
            return _json(_public(message))
        if method == "DELETE":
            del channel.messages[message_id]
            return web.Response(status=204)
        if method == "PATCH":
            updated = self._apply_edit(message, body or {}, files)
            channel.messages[message_id] = updated
            return _json(_public(updated))
        self.unimplemented.append(f"{method} channel message")
        return _json({"message": "405"}, status=405)

    def channel_messages(self, channel: Channel | None = None) -> list[dict[str, Any]]:
        """Messages currently in the channel, oldest first."""
        chan = channel or self.channel
        return sorted(chan.messages.values(), key=lambda m: int(m["id"]))

    # -- message bodies ----------------------------------------------------------------

    def _attachments(
        self, specs: list[dict[str, Any]] | None, files: list[tuple[str, bytes]]
    ) -> list[dict[str, Any]]:
        out = []
        for index, (name, data) in enumerate(files):
            spec = next(
                (s for s in specs or [] if str(s.get("id")) == str(index)), {"filename": name}
            )
            out.append(self.attachment(data, spec.get("filename", name)))
        return out

    def _new_message(
        self,
        channel: Channel,
        data: dict[str, Any],
        files: list[tuple[str, bytes]],
        interaction: Injected | None = None,
    ) -> dict[str, Any]:
        attachments = self._attachments(data.get("attachments"), files)
        message = {
            "id": str(snowflake()),
            "channel_id": str(channel.id),
            "author": self.bot_user.payload(),
            "content": data.get("content") or "",
            "timestamp": iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": data.get("embeds") or [],
            "components": data.get("components") or [],
            "pinned": False,
            "type": 20 if interaction else 0,
            "flags": data.get("flags") or 0,
            "_files": files,
        }
        if channel.guild_id is not None:
            message["guild_id"] = str(channel.guild_id)
        if interaction is None or not (message["flags"] & 64):
            channel.messages[int(message["id"])] = message
        return message

    def _apply_edit(
        self, message: dict[str, Any], body: dict[str, Any], files: list[tuple[str, bytes]]
    ) -> dict[str, Any]:
        updated = dict(message)
        for key in ("content", "embeds", "components"):
            if key in body:
                updated[key] = body[key] if body[key] is not None else (
                    "" if key == "content" else []
                )  # fmt: skip
        if "attachments" in body:
            kept = [
                a
                for a in message.get("attachments", [])
                if any(str(s.get("id")) == a["id"] for s in body["attachments"])
            ]
            updated["attachments"] = kept + self._attachments(body["attachments"], files)
            updated["_files"] = files
        updated["flags"] = int(updated.get("flags") or 0) & ~128
        updated["edited_timestamp"] = iso()
        return updated

    # -- CDN ---------------------------------------------------------------------------

    def attachment(
        self,
        data: bytes,
        filename: str,
        content_type: str | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        """Host ``data`` on the emulated CDN; returns the attachment object (with
        ``width``/``height`` when given, as Discord adds them for images)."""
        attachment_id = snowflake()
        key = f"{attachment_id}/{filename}"
        now = time.time()
        blob = _Blob(data, now + self.attachment_url_lifetime, secrets.token_hex(32))
        self._blobs[key] = blob
        expires = int(blob.expires_at)
        query = f"ex={expires:x}&is={int(now):x}&hm={blob.signature}&"
        url = f"{self.base_url}/cdn/attachments/{self.channel.id}/{key}?{query}"
        payload = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type:
            payload["content_type"] = content_type
        if width is not None and height is not None:
            payload |= {"width": width, "height": height}
        return payload

    def _cdn(self, request: web.Request) -> web.Response:
        """Serve an attachment while its URL is unexpired and carries its signature."""
        key = "/".join(request.path.split("/")[4:])
        blob = self._blobs.get(key)
        if (
            blob is None
            or request.query.get("hm") != blob.signature
            or time.time() >= blob.expires_at
        ):
            # What Discord's CDN answers for an expired or unsigned attachment URL.
            return web.Response(status=404, text="This content is no longer available.")
        return web.Response(body=blob.data, content_type="application/octet-stream")

    # -- injection ---------------------------------------------------------------------

    def _base_interaction(
        self,
        kind: int,
        member: Member | None,
        channel: Channel,
        upload_limit: int,
        age: float,
        locale: str = "en-US",
    ) -> tuple[dict[str, Any], Injected]:
        interaction_id = snowflake(time.time() - age)
        token = "itok-" + secrets.token_urlsafe(24)
        user = (member or self.alice).user
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "token": token,
            "version": 1,
            "channel_id": str(channel.id),
            "channel": channel.payload(self.bot_user.id),
            "app_permissions": str(channel.bot_permissions),
            "locale": locale,
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(channel.guild_id or self.guild.id)},
            "attachment_size_limit": upload_limit,
        }
        if channel.guild_id is None:
            payload["user"] = user.payload()
            payload["context"] = 1
            payload["channel"]["recipients"] = [user.payload()]
        else:
            assert member is not None
            payload["guild_id"] = str(channel.guild_id)
            guild = self.guild_of(channel)
            payload["guild_locale"] = guild.preferred_locale if guild else "en-US"
            payload["member"] = member.payload(with_permissions=True)
            payload["context"] = 0
        it = Injected(
            self, interaction_id, token, kind, channel, user, upload_limit, time.monotonic()
        )
        return payload, it

    async def _send(self, payload: dict[str, Any], it: Injected) -> Injected:
        self.interactions[it.id] = it
        self._by_token[it.token] = it
        it.sent_at = time.monotonic()
        await self.dispatch("INTERACTION_CREATE", payload)
        return it

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        member: Member | None = None,
        channel: Channel | None = None,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        subcommand: str | None = None,
        age: float = 0.0,
        locale: str = "en-US",
    ) -> Injected:
        """Run ``/name [subcommand] options...`` as ``member`` (default alice; in another
        guild, its first member) with the user's ``locale``.

        Option values: plain values, a :class:`Member`/:class:`Role`, or an attachment
        object from :meth:`attachment`. Validated against what the bot registered.
        """
        chan = channel or self.channel
        who = member or self._default_member(chan)
        command = self.registered(name, 1, self.guild_of(chan))
        schema = command.get("options") or []
        if subcommand is not None:
            sub = next((o for o in schema if o["name"] == subcommand and o["type"] == 1), None)
            if sub is None:
                raise EmulatorError(f"/{name} has no subcommand {subcommand!r}")
            schema = sub.get("options") or []
        resolved: dict[str, dict[str, Any]] = {}
        opts = [self._option(name, schema, k, v, resolved) for k, v in (options or {}).items()]
        for spec in schema:
            if spec.get("required") and spec["name"] not in (options or {}):
                raise EmulatorError(f"/{name}: required option {spec['name']!r} missing")
        if subcommand is not None:
            opts = [{"name": subcommand, "type": 1, "options": opts}]
        payload, it = self._base_interaction(2, who, chan, upload_limit, age, locale)
        data: dict[str, Any] = {"id": command["id"], "name": name, "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        payload["data"] = data
        return await self._send(payload, it)

    def _default_member(self, channel: Channel) -> Member | None:
        guild = self.guild_of(channel)
        if guild is None:
            return None
        return self.alice if guild is self.guild else guild.humans[0]

    def _option(
        self,
        command: str,
        schema: list[dict[str, Any]],
        key: str,
        value: Any,
        resolved: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        spec = next((o for o in schema if o["name"] == key), None)
        if spec is None:
            raise EmulatorError(f"/{command} has no option {key!r}")
        kind = spec["type"]
        if spec.get("choices") and value not in [c["value"] for c in spec["choices"]]:
            raise EmulatorError(f"/{command} {key}: {value!r} is not one of its choices")
        if kind == 11:  # ATTACHMENT
            if not isinstance(value, dict) or "url" not in value:
                raise EmulatorError(f"/{command} {key} needs an attachment")
            resolved.setdefault("attachments", {})[value["id"]] = value
            return {"name": key, "type": kind, "value": value["id"]}
        if kind in (6, 9) and isinstance(value, Member):  # USER / MENTIONABLE
            resolved.setdefault("users", {})[str(value.user.id)] = value.user.payload()
            resolved.setdefault("members", {})[str(value.user.id)] = {
                k: v for k, v in value.payload().items() if k != "user"
            } | {"permissions": str(value.permissions)}
            return {"name": key, "type": kind, "value": str(value.user.id)}
        if kind == 7 and isinstance(value, Channel):  # CHANNEL
            resolved.setdefault("channels", {})[str(value.id)] = {
                "id": str(value.id),
                "type": value.type,
                "name": value.name,
                "permissions": str(value.bot_permissions),
                "guild_id": str(value.guild_id),
                "position": 0,
            }
            return {"name": key, "type": kind, "value": str(value.id)}
        if kind == 8 and isinstance(value, Role):  # ROLE
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return {"name": key, "type": kind, "value": str(value.id)}
        expected = {3: str, 4: int, 5: bool, 10: (int, float)}.get(kind)
        if expected is None or not isinstance(value, expected):
            raise EmulatorError(f"/{command} {key}: {value!r} does not fit option type {kind}")
        for bound, check in (
            ("min_value", lambda b: value < b),
            ("max_value", lambda b: value > b),
        ):
            if bound in spec and check(spec[bound]):
                raise EmulatorError(f"/{command} {key}: {value!r} is outside its range")
        return {"name": key, "type": kind, "value": value}

    def user_message(
        self,
        author: Member | None = None,
        *,
        attachments: list[dict[str, Any]] | None = None,
        embeds: list[dict[str, Any]] | None = None,
        content: str = "",
        channel: Channel | None = None,
    ) -> dict[str, Any]:
        """A message posted by a member (for context-menu commands)."""
        chan = channel or self.channel
        author = author or self._default_member(chan) or self.alice
        message = {
            "id": str(snowflake()),
            "channel_id": str(chan.id),
            "author": author.user.payload(),
            "content": content,
            "timestamp": iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": embeds or [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if chan.guild_id is not None:
            message["guild_id"] = str(chan.guild_id)
        chan.messages[int(message["id"])] = message
        return message

    def image_message(
        self,
        images: int | Sequence[tuple[str, bytes]] = 2,
        *,
        text_file: tuple[str, bytes] | None = ("notes.txt", b"not an image\n"),
        embed_images: int | Sequence[tuple[str, bytes]] = 0,
        embed_field: str = "image",
        author: Member | None = None,
        channel: Channel | None = None,
        content: str = "",
    ) -> dict[str, Any]:
        """A member's message for the "Upscale image" context menu: image attachments
        (``images``: a count of generated PNGs, or ``(filename, bytes)`` pairs) with their
        content type and size, then a ``text/plain`` file (unless ``text_file`` is None),
        and image embeds hosted on the CDN (``embed_field`` "image" for a rich embed,
        "thumbnail" for a linked image's embed, as Discord makes them)."""
        pairs = _images(images, "image")
        embedded = _images(embed_images, "embedded")
        attachments = [self._image_attachment(name, data) for name, data in pairs]
        if text_file is not None:
            attachments.append(
                self.attachment(text_file[1], text_file[0], "text/plain; charset=utf-8")
            )
        embeds = []
        for name, data in embedded:
            hosted = self._image_attachment(name, data)
            media = {k: hosted[k] for k in ("url", "proxy_url", "width", "height")}
            kind = "rich" if embed_field == "image" else "image"
            embeds.append({"type": kind, "url": hosted["url"], embed_field: media})
        return self.user_message(
            author, attachments=attachments, embeds=embeds, content=content, channel=channel
        )

    def _image_attachment(self, name: str, data: bytes) -> dict[str, Any]:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            mime = Image.MIME.get(image.format or "", "application/octet-stream")
        return self.attachment(data, name, mime, width=width, height=height)

    async def message_command(
        self,
        name: str,
        message: dict[str, Any],
        *,
        member: Member | None = None,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        age: float = 0.0,
        locale: str = "en-US",
    ) -> Injected:
        """Run the message context-menu command ``name`` on ``message`` (in its channel)."""
        channel = self.channels[int(message["channel_id"])]
        command = self.registered(name, 3, self.guild_of(channel))
        who = member or self._default_member(channel)
        payload, it = self._base_interaction(2, who, channel, upload_limit, age, locale)
        payload["data"] = {
            "id": command["id"],
            "name": name,
            "type": 3,
            "target_id": message["id"],
            "resolved": {"messages": {message["id"]: _public(message)}},
        }
        return await self._send(payload, it)

    async def click(
        self,
        message: dict[str, Any],
        custom_id: str,
        *,
        member: Member | None = None,
        locale: str = "en-US",
    ) -> Injected:
        """Press the button ``custom_id`` on a message the bot sent."""
        ids = [
            c.get("custom_id")
            for row in message.get("components", [])
            for c in row.get("components", [])
        ]
        if custom_id not in ids:
            raise EmulatorError(f"no button {custom_id!r} on that message (has {ids})")
        channel = self.channels[int(message["channel_id"])]
        who = member or self._default_member(channel)
        payload, it = self._base_interaction(3, who, channel, DEFAULT_UPLOAD_LIMIT, 0, locale)
        payload["message"] = _public(channel.messages.get(int(message["id"]), message))
        it.message_id = int(message["id"])
        payload["data"] = {"custom_id": custom_id, "component_type": 2}
        return await self._send(payload, it)


@dataclass
class _Blob:
    """Bytes on the emulated CDN and what their URL must carry."""

    data: bytes
    expires_at: float  # Unix seconds
    signature: str  # the URL's hm parameter


class _Reply(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json": with a charset, discord.py treats the body as text.
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _images(spec: int | Sequence[tuple[str, bytes]], stem: str) -> list[tuple[str, bytes]]:
    """``(filename, PNG bytes)`` pairs: ``spec`` itself, or that many small distinct PNGs."""
    if not isinstance(spec, int):
        return list(spec)
    out = []
    for n in range(spec):
        buffer = io.BytesIO()
        colour = (40 * n % 256, 200 - 30 * n % 200, 90)
        Image.new("RGB", (64 + 8 * n, 48 + 4 * n), colour).save(buffer, "PNG")
        out.append((f"{stem}{n + 1}.png", buffer.getvalue()))
    return out


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if not k.startswith("_")}


def find_button(
    message: dict[str, Any], predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    for row in message.get("components", []):
        for component in row.get("components", []):
            if predicate(component):
                return component
    raise EmulatorError("no such button")
