"""The emulated gateway: sessions, IDENTIFY and RESUME, event dispatch, shards.

A connection gets HELLO; heartbeats are answered; IDENTIFY gets READY and a GUILD_CREATE
per guild of its shard; RESUME replays the events held while the shard was away.
IDENTIFY may carry ``shard: [id, count]`` (none means ``[0, 1]``); READY echoes it and
lists, like the GUILD_CREATEs after it, only that shard's guilds; guild events
(interactions included) go only to the connection of the shard owning the guild, DM
events to shard 0. Like Discord, IDENTIFYs in one concurrency bucket (``shard_id %
max_concurrency``) less than ``identify_interval`` (5 s) apart are refused with op 9
(``d: false``; counted in ``identify_refusals``). Stricter than Discord (which lets two
sessions share a shard), a second session on a shard that already has a live connection
is refused the same way (``duplicate_session_refusals``); discord.py then identifies
again after its ``before_identify_hook`` and gets the shard once the old connection is
gone. Every attempt is in ``identify_log``; :meth:`Gateway.connected_shards` lists live
shards.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from tests.emulators.discord.world import Channel, Guild, World, shard_of

IDENTIFY_INTERVAL = 5.0  # seconds between IDENTIFYs in one concurrency bucket
SESSION_START_TOTAL = 1000  # session starts allowed per day


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


class Gateway(World):
    """Gateway connections, one identified session per shard."""

    def __init__(self, *, token: str) -> None:
        super().__init__(token=token)
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
    def pending_events(self) -> list[dict[str, Any]]:
        """Events held for shards that are reconnecting, every shard together."""
        return [event for events in self._pending.values() for event in events]

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

    async def close_connections(self) -> None:
        """Close every gateway connection (the emulator is stopping)."""
        for ws in list(self._sockets):
            await ws.close()

    async def announce_guild(self, guild: Guild) -> None:
        """Send GUILD_CREATE for ``guild`` (the bot joined it) to the shard owning it."""
        await self.dispatch("GUILD_CREATE", guild.payload(self.bot_user.id))

    async def set_bot_permissions(self, channel: Channel, permissions: int) -> None:
        """Give the bot exactly ``permissions`` in ``channel``, as a server admin would.

        Interactions there carry them as ``app_permissions``, and the bot's cache learns
        them from a CHANNEL_UPDATE (so ``permissions_for(guild.me)`` agrees).
        """
        channel.bot_permissions = permissions
        if channel.guild_id is not None:
            await self.dispatch("CHANNEL_UPDATE", channel.payload(self.bot_user.id))
