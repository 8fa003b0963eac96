"""The emulated REST API: routing, auth, faults, messages, history, DMs and command sync.

Every REST call is recorded in ``calls``; calls to routes it does not implement are
answered 404 and listed in ``unimplemented``. :meth:`Rest.fail` injects 429 (with ``Via``
and ``retry_after``, which discord.py needs to retry) or 5xx answers, or makes calls
never answer (:data:`HANG`) or take effect without an answer (:data:`APPLY_THEN_HANG`); a
``latency`` knob delays every REST answer. Uploads over the channel's (or the
interaction's) limit get 413 code 40005.

Owner tooling: ``reject_token`` (401 here, 4004 on the gateway), ``GET
/users/@me/guilds`` (``permissions`` from :attr:`Guild.bot_permissions`), message history,
``POST /users/@me/channels`` and DMs (``dms_sent``, :meth:`Rest.dms_to`; users in
``closed_dms`` refuse them with 50007), the application ``owner``.

The interaction routes (callbacks, webhooks) are answered by the interactions part through
:meth:`Rest._route_interactions`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.emulators.discord.base import EmulatorError
from tests.emulators.discord.cdn import Cdn
from tests.emulators.discord.gateway import SESSION_START_TOTAL, Gateway
from tests.emulators.discord.world import (
    ATTACH_FILES,
    DEFAULT_UPLOAD_LIMIT,
    Channel,
    Guild,
    Member,
    User,
    iso,
    snowflake,
)

HANG = 0  # a fault "status" that makes the call never answer
APPLY_THEN_HANG = -1  # a fault "status": the call takes effect, but its answer never comes


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


class Reply(Exception):
    """Answer the current request with ``response`` (raised from deep in a handler)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer as Discord sends it."""
    # Exactly "application/json": with a charset, discord.py treats the body as text.
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def public(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message without the emulator's own keys (``_files``)."""
    return {k: v for k, v in message.items() if not k.startswith("_")}


class Rest(Gateway, Cdn):
    """The REST routes, with faults and a record of every call."""

    def __init__(self, *, token: str) -> None:
        super().__init__(token=token)
        self.latency = 0.0  # seconds every REST answer is delayed
        self.calls: list[Call] = []
        self.unimplemented: list[str] = []
        self.hung: list[str] = []
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self._faults: list[Fault] = []
        self.dm_channels: dict[int, Channel] = {}  # user id -> the DM the bot opened
        self.dms_sent: list[tuple[int, dict[str, Any]]] = []  # (user id, message)
        self.closed_dms: set[int] = set()  # users who refuse DMs from the bot

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
            response = await self._cdn(request)
            self.calls.append(Call(method, path, None, [], response.status, time.monotonic()))
            await self._notify()
            return response
        body, files = await self._read_body(request)
        fault = self._take_fault(method, path, bool(files))
        if fault is not None and fault.status == HANG:
            self.hung.append(f"{method} {path}")
            await self._notify()
            await self._stopping.wait()  # never answers (ends when the emulator stops)
            return web.Response(status=503)
        if fault is not None and fault.status != APPLY_THEN_HANG:
            response = self._fault_response(fault)
        else:
            try:
                response = await self._route(request, method, path, body, files)
            except Reply as reply:
                response = reply.response
        self.calls.append(Call(method, path, body, files, response.status, time.monotonic()))
        await self._notify()
        if fault is not None and fault.status == APPLY_THEN_HANG:
            self.hung.append(f"{method} {path}")
            await self._stopping.wait()  # done, but the client never hears so
        return response

    def _fault_response(self, fault: Fault) -> web.Response:
        if fault.status == 429:
            return json_response(
                {"message": "You are being rate limited.", "retry_after": fault.retry_after,
                 "global": False},
                status=429,
                headers={"Via": "1.1 google", "Retry-After": str(fault.retry_after)},
            )  # fmt: skip
        if fault.status == 403:
            return json_response({"message": "Missing Permissions", "code": 50013}, status=403)
        return json_response({"message": "Internal Server Error", "code": 0}, status=fault.status)

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
            return json_response(self.bot_user.payload())
        if method == "GET" and api == "/oauth2/applications/@me":
            return json_response(self._application())
        if method == "GET" and api == "/gateway":
            return json_response({"url": self.gateway_url})
        if method == "GET" and api == "/gateway/bot":
            return json_response(self._gateway_bot())
        if method == "GET" and api == "/users/@me/guilds":
            return json_response(self._my_guilds(request.query))
        if method == "POST" and api == "/users/@me/channels":
            return self._open_dm(body)
        if m := re.fullmatch(rf"/applications/{app}/commands", api):
            return self._sync_commands(method, body, None)
        if m := re.fullmatch(rf"/applications/{app}/guilds/(\d+)/commands", api):
            return self._sync_commands(method, body, int(m[1]))
        answer = await self._route_interactions(method, api, body, files)
        if answer is not None:
            return answer
        if m := re.fullmatch(r"/channels/(\d+)/messages", api):
            if method == "POST":
                return self._channel_post(int(m[1]), body, files)
            if method == "GET":
                return json_response(self._history(self._channel(int(m[1])), request.query))
        if (m := re.fullmatch(r"/channels/(\d+)", api)) and method == "GET":
            return json_response(self._channel(int(m[1])).payload(self.bot_user.id))
        if m := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", api):
            return self._channel_message(method, int(m[1]), int(m[2]), body, files)
        self.unimplemented.append(f"{method} {path}")
        return json_response({"message": "404: Not Found", "code": 0}, status=404)

    async def _route_interactions(
        self, method: str, api: str, body: Any, files: list[tuple[str, bytes]]
    ) -> web.Response | None:
        """Answer an interaction route (callback, webhook); None for any other path."""
        return None

    # -- login, gateway, guilds, DMs and history -----------------------------------

    def _check_auth(self, request: web.Request) -> None:
        if self.reject_token or request.headers.get("Authorization") != f"Bot {self.token}":
            raise Reply(json_response({"message": "401: Unauthorized", "code": 0}, status=401))

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
        user = self.users().get(user_id)
        if user is None:
            return json_response({"message": "Invalid Recipient(s)", "code": 50033}, status=400)
        channel = self.dm_channels.get(user_id)
        if channel is None:
            channel = Channel(snowflake(), f"dm-{user.name}", None, type=1, recipient=user)
            self.dm_channels[user_id] = channel
            self.channels[channel.id] = channel
        return json_response(channel.payload())

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
        return [public(x) for x in reversed(messages[-limit:])]

    def _sync_commands(self, method: str, body: Any, guild_id: int | None) -> web.Response:
        if method == "GET":
            stored = (
                self.global_commands if guild_id is None else self.guild_commands.get(guild_id, [])
            )
            return json_response(stored)
        if method != "PUT":
            self.unimplemented.append(f"{method} commands")
            return json_response({"message": "405"}, status=405)
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
        return json_response(stored)

    def registered(self, name: str, kind: int = 1, guild: Guild | None = None) -> dict[str, Any]:
        """The command the bot registered under ``name`` (that guild's commands first)."""
        gid = (guild or self.guild).id
        for command in [*self.guild_commands.get(gid, []), *self.global_commands]:
            if command["name"] == name and command.get("type", 1) == kind:
                return command
        raise EmulatorError(f"the bot registered no command {name!r} of type {kind}")

    # -- uploads ---------------------------------------------------------------------
    def _check_upload(self, files: list[tuple[str, bytes]], limit: int) -> None:
        for _, data in files:
            if len(data) > limit:
                raise Reply(
                    json_response(
                        {"message": "Request entity too large", "code": 40005}, status=413
                    )
                )

    # -- channel messages --------------------------------------------------------------

    def _channel(self, channel_id: int) -> Channel:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise Reply(json_response({"message": "Unknown Channel", "code": 10003}, status=404))
        return channel

    def _channel_post(
        self, channel_id: int, body: Any, files: list[tuple[str, bytes]]
    ) -> web.Response:
        channel = self._channel(channel_id)
        if channel.recipient is not None and channel.recipient.id in self.closed_dms:
            return json_response(
                {"message": "Cannot send messages to this user", "code": 50007}, status=403
            )
        if files and not channel.bot_permissions & ATTACH_FILES:
            return json_response({"message": "Missing Permissions", "code": 50013}, status=403)
        guild = self.guild_of(channel)
        self._check_upload(files, DEFAULT_UPLOAD_LIMIT if guild is None else guild.upload_limit)
        message = self._new_message(channel, body or {}, files)
        if channel.recipient is not None:
            self.dms_sent.append((channel.recipient.id, message))
        return json_response(public(message))

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
            return json_response({"message": "Unknown Message", "code": 10008}, status=404)
        if method == "GET":
            return json_response(public(message))
        if method == "DELETE":
            del channel.messages[message_id]
            return web.Response(status=204)
        if method == "PATCH":
            updated = self._apply_edit(message, body or {}, files)
            channel.messages[message_id] = updated
            return json_response(public(updated))
        self.unimplemented.append(f"{method} channel message")
        return json_response({"message": "405"}, status=405)

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
        from_interaction: bool = False,
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
            "type": 20 if from_interaction else 0,
            "flags": data.get("flags") or 0,
            "_files": files,
        }
        if channel.guild_id is not None:
            message["guild_id"] = str(channel.guild_id)
        if not from_interaction or not (message["flags"] & 64):
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
