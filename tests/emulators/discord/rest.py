"""The emulated REST API: routing, auth, faults, messages, history, DMs and command sync.

Every REST call is recorded in ``calls``; calls to routes it does not implement are
answered 404 and listed in ``unimplemented``. :meth:`Rest.fail` injects 429 (with ``Via``
and ``retry_after``, which discord.py needs to retry) or 5xx answers, or makes calls
never answer (:data:`HANG`) or take effect without an answer (:data:`APPLY_THEN_HANG`);
``applied=True`` makes a call take effect and then answer the fault's status (a post
Discord made whose answer the bot lost); a ``latency`` knob delays every REST answer.
Uploads over the channel's (or the interaction's) limit get 413 code 40005.

Owner tooling: ``reject_token`` (401 here, 4004 on the gateway), ``GET
/users/@me/guilds`` (``permissions`` from :attr:`Guild.bot_permissions`), ``POST
/users/@me/channels`` and DMs (``dms_sent``, :meth:`Rest.dms_to`; users in ``closed_dms``
refuse them with 50007), the application ``owner``.

Channel messages as Discord keeps them: ``GET /channels/{id}/messages`` with ``limit``
(1-100, default 50) and one of ``before``, ``after``, ``around``, newest first (a bad query
is refused with 400 code 50035); ``POST`` with ``nonce`` and ``enforce_nonce`` returns the
author's earlier message with that nonce from the last ``nonce_window`` seconds instead of
posting again; ``PATCH`` only the bot's own messages (403 code 50005), ``DELETE`` others'
only with Manage Messages (403 code 50013). The bot's own messages include its non-ephemeral
interaction responses, edited and deleted here with the bot token whatever became of the
interaction token (docs/interaction-tokens.md).

Every JSON body the bot sends on the message routes is checked against Discord's OpenAPI
spec (:mod:`.spec`): a field the spec does not know, or a wrong type (then answered 400
code 50035 like Discord), is listed in ``spec_violations``, and :meth:`Rest.check_spec`
(called when the emulator's ``async with`` ends) fails the test with the list.

The interaction routes (callbacks, webhooks) are answered by the interactions part through
:meth:`Rest._route_interactions`.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler

from tests.emulators.discord.base import EmulatorError
from tests.emulators.discord.cdn import Cdn
from tests.emulators.discord.gateway import SESSION_START_TOTAL, Gateway
from tests.emulators.discord.spec import check_body
from tests.emulators.discord.world import (
    ATTACH_FILES,
    DEFAULT_UPLOAD_LIMIT,
    MANAGE_MESSAGES,
    Channel,
    Guild,
    Member,
    User,
    iso,
    snowflake,
)

HANG = 0  # a fault "status" that makes the call never answer
APPLY_THEN_HANG = -1  # a fault "status": the call takes effect, but its answer never comes
NONCE_WINDOW = 5 * 60.0  # seconds enforce_nonce finds an earlier message ("past few minutes")
HISTORY_LIMIT = (1, 100)  # GET /channels/{id}/messages: the allowed "limit"
HISTORY_DEFAULT_LIMIT = 50
HISTORY_ANCHORS = ("around", "before", "after")  # mutually exclusive (Discord's docs)


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
    applied: bool = False  # the call takes effect before the fault's answer


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
    """A stored message without the emulator's own keys (``_files``, ``_nonce``)."""
    return {k: v for k, v in message.items() if not k.startswith("_")}


def invalid_form_body(errors: dict[str, list[tuple[str, str]]]) -> Reply:
    """Discord's 400 code 50035: ``errors`` maps a field to its ``(code, message)`` pairs."""
    return Reply(
        json_response(
            {
                "message": "Invalid Form Body",
                "code": 50035,
                "errors": {
                    field: {"_errors": [{"code": c, "message": m} for c, m in problems]}
                    for field, problems in errors.items()
                },
            },
            status=400,
        )
    )


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
        self.nonce_window = NONCE_WINDOW
        self.spec_violations: list[str] = []  # "METHOD path: problem", see check_spec()
        # (author id, nonce as text) -> (Unix time, channel id, message id) of the first post
        self._nonces: dict[tuple[int, str], tuple[float, int, int]] = {}

    def fail(
        self,
        path_regex: str,
        status: int = 500,
        *,
        times: int = 1,
        method: str | None = None,
        retry_after: float = 0.05,
        files_only: bool = False,
        applied: bool = False,
    ) -> None:
        """The next ``times`` REST calls matching ``path_regex`` answer ``status``.

        ``status=HANG`` (0) makes them never answer (listed in ``hung``); ``files_only``
        matches only requests that upload files (deliveries, not progress edits);
        ``applied`` makes each call take effect first, as if Discord did what was asked
        and its answer was lost (``APPLY_THEN_HANG`` is ``HANG`` with ``applied``).
        """
        if status == APPLY_THEN_HANG:
            status, applied = HANG, True
        self._faults.append(
            Fault(re.compile(path_regex), method, status, times, retry_after, files_only, applied)
        )

    def clear_faults(self) -> None:
        """Forget every fault not yet used."""
        self._faults.clear()

    def check_spec(self) -> None:
        """Raise :class:`EmulatorError` listing ``spec_violations``, if there are any.

        Called when the emulator's ``async with`` block ends without an exception; a test
        that sends a bad body on purpose clears the list after looking at it.
        """
        if self.spec_violations:
            listed = "\n".join(self.spec_violations)
            raise EmulatorError(f"requests Discord's API spec does not allow:\n{listed}")

    def _check_body(self, route: str, method: str, path: str, body: Any) -> None:
        """Record ``body``'s departures from the spec for ``route``; a wrong type is also
        refused, as Discord refuses it (400 code 50035)."""
        unknown, wrong = check_body(route, body)
        self.spec_violations.extend(f"{method} {path}: {problem}" for problem in unknown + wrong)
        if wrong:
            raise invalid_form_body({route: [("BASE_TYPE_BAD_TYPE", p) for p in wrong]})

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
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.latency and request.path.startswith("/api/"):
            await asyncio.sleep(self.latency)
        return await handler(request)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
        if request.content_type.startswith("multipart/"):
            files: list[tuple[str, bytes]] = []
            body: Any = None
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    raise web.HTTPBadRequest(text="nested multipart")
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files.append((part.filename or "file", bytes(await part.read())))
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
        if fault is not None and fault.status == HANG and not fault.applied:
            self.hung.append(f"{method} {path}")
            await self._notify()
            await self._stopping.wait()  # never answers (ends when the emulator stops)
            return web.Response(status=503)
        if fault is not None and not fault.applied:
            response = self._fault_response(fault)
        else:
            try:
                response = await self._route(request, method, path, body, files)
            except Reply as reply:
                response = reply.response
            if fault is not None and fault.status != HANG:
                response = self._fault_response(fault)  # done, but the answer is lost
        self.calls.append(Call(method, path, body, files, response.status, time.monotonic()))
        await self._notify()
        if fault is not None and fault.status == HANG:
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
        answer = await self._route_interactions(method, path, api, body, files)
        if answer is not None:
            return answer
        if m := re.fullmatch(r"/channels/(\d+)/messages", api):
            if method == "POST":
                self._check_body("create message", method, path, body)
                return self._channel_post(int(m[1]), body, files)
            if method == "GET":
                return json_response(
                    self._history(self._channel(int(m[1])), request.query, method, path)
                )
        if (m := re.fullmatch(r"/channels/(\d+)", api)) and method == "GET":
            return json_response(self._channel(int(m[1])).payload(self.bot_user.id))
        if m := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", api):
            if method == "PATCH":
                self._check_body("edit message", method, path, body)
            return self._channel_message(method, int(m[1]), int(m[2]), body, files)
        self.unimplemented.append(f"{method} {path}")
        return json_response({"message": "404: Not Found", "code": 0}, status=404)

    async def _route_interactions(
        self, method: str, path: str, api: str, body: Any, files: list[tuple[str, bytes]]
    ) -> web.Response | None:
        """Answer an interaction route (callback, webhook); None for any other path.
        ``api`` is ``path`` without its ``/api/v10`` prefix."""
        return None

    def _channel_message_edited(self, message: dict[str, Any]) -> None:
        """A channel message was edited through the channel route (see Interactions)."""

    def _channel_message_deleted(self, message: dict[str, Any]) -> None:
        """A channel message was deleted through the channel route (see Interactions)."""

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
        recipient = (body or {}).get("recipient_id")
        try:
            user_id = int(recipient) if recipient is not None else 0
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

    def _history(
        self, channel: Channel, query: Any, method: str = "GET", path: str = ""
    ) -> list[dict[str, Any]]:
        """GET /channels/{id}/messages as Discord answers it, always newest first.

        ``limit`` 1-100 (default 50). ``before=X``: the ``limit`` newest messages older than
        X. ``after=X``: the ``limit`` oldest messages newer than X (so discord.py's
        ``history(after=...)`` pages forward from the newest id of each page).
        ``around=X``: X itself (if it exists) and up to ``limit // 2`` messages on each
        side, so ``limit=100`` can give 101 (the quirk discord.py's ``history`` notes).
        A bad ``limit`` or snowflake is refused with 400 code 50035; more than one of
        before/after/around is refused too and recorded in ``spec_violations``.
        """
        errors: dict[str, list[tuple[str, str]]] = {}
        limit = HISTORY_DEFAULT_LIMIT
        if "limit" in query:
            raw = query["limit"]
            try:
                limit = int(raw)
            except ValueError:
                errors["limit"] = [("NUMBER_TYPE_COERCE", f'Value "{raw}" is not int.')]
            else:
                low, high = HISTORY_LIMIT
                if limit < low:
                    errors["limit"] = [
                        ("NUMBER_TYPE_MIN", f"int value should be greater than or equal to {low}.")
                    ]
                elif limit > high:
                    errors["limit"] = [
                        ("NUMBER_TYPE_MAX", f"int value should be less than or equal to {high}.")
                    ]
        anchors: dict[str, int] = {}
        for name in HISTORY_ANCHORS:
            if name in query:
                raw = query[name]
                if raw.isascii() and raw.isdigit():
                    anchors[name] = int(raw)
                else:
                    errors[name] = [("SNOWFLAKE_TYPE_INVALID", f'Value "{raw}" is not snowflake.')]
        if len(anchors) > 1:
            self.spec_violations.append(
                f"{method} {path}: {', '.join(sorted(anchors))} together "
                "(before, after and around are mutually exclusive)"
            )
            errors["_query"] = [("QUERY_INVALID", "before, after and around are exclusive.")]
        if errors:
            raise invalid_form_body(errors)
        messages = sorted(channel.messages.values(), key=lambda x: int(x["id"]))
        ids = [int(x["id"]) for x in messages]
        if "before" in anchors:
            cut = bisect.bisect_left(ids, anchors["before"])
            page = messages[max(0, cut - limit) : cut]
        elif "after" in anchors:
            cut = bisect.bisect_right(ids, anchors["after"])
            page = messages[cut : cut + limit]
        elif "around" in anchors:
            anchor = anchors["around"]
            low, high = bisect.bisect_left(ids, anchor), bisect.bisect_right(ids, anchor)
            side = limit // 2
            page = messages[max(0, low - side) : high + side]
        else:
            page = messages[-limit:]
        return [public(x) for x in reversed(page)]

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
        data = body or {}
        nonce = data.get("nonce")
        if nonce is not None and data.get("enforce_nonce") is True:
            earlier = self._nonces.get((self.bot_user.id, str(nonce)))
            if earlier is not None and time.time() - earlier[0] <= self.nonce_window:
                _, channel_id, message_id = earlier
                found = self.channels[channel_id].messages.get(message_id)
                if found is None:  # deleted since: Discord does not post it again
                    return json_response({"message": "Unknown Message", "code": 10008}, 404)
                return json_response(public(found) | {"nonce": found["_nonce"]})
        message = self._new_message(channel, data, files)
        if nonce is not None:  # the latest post with this nonce is the one a repeat finds
            message["_nonce"] = nonce
            self._nonces[(self.bot_user.id, str(nonce))] = (
                time.time(),
                channel.id,
                int(message["id"]),
            )
        if channel.recipient is not None:
            self.dms_sent.append((channel.recipient.id, message))
        # The nonce comes back in this answer only: Discord does not keep it, so GET and
        # history leave it out.
        return json_response(public(message) | ({"nonce": nonce} if nonce is not None else {}))

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
        mine = int(message["author"]["id"]) == self.bot_user.id
        if method == "GET":
            return json_response(public(message))
        if method == "DELETE":
            if not mine and not channel.bot_permissions & MANAGE_MESSAGES:
                return json_response({"message": "Missing Permissions", "code": 50013}, 403)
            del channel.messages[message_id]
            self._channel_message_deleted(message)
            return web.Response(status=204)
        if method == "PATCH":
            if not mine:
                return json_response(
                    {"message": "Cannot edit a message authored by another user", "code": 50005},
                    status=403,
                )
            updated = self._apply_edit(message, body or {}, files)
            channel.messages[message_id] = updated
            self._channel_message_edited(updated)
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
        interaction: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A message by the bot, stored in ``channel`` unless it is an ephemeral interaction
        response. ``interaction`` (its ``interaction_metadata``) makes it a response: type
        20, sent by the application's webhook, still authored by the bot user."""
        from_interaction = interaction is not None
        attachments = self._attachments(data.get("attachments"), files)
        message: dict[str, Any] = {
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
        if interaction is not None:
            message["webhook_id"] = str(self.application_id)
            message["application_id"] = str(self.application_id)
            message["interaction_metadata"] = interaction
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
