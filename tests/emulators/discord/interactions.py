"""Emulated interactions: injecting them, and the callbacks, webhooks and followups after.

Tests inject slash commands (:meth:`Interactions.slash`), message context-menu commands
(:meth:`Interactions.message_command`, on a member's message from :meth:`user_message` or
:meth:`image_message`) and button clicks (:meth:`Interactions.click`), validated against
the commands the bot registered, and get an :class:`Injected` that records what the bot
answered: the ack, every version of the ``@original`` message, followups.

Realism: an ack later than ``ack_deadline`` s gets 404 code 10062; uploads over the
interaction's ``attachment_size_limit`` get 413 code 40005. An interaction token dies
``token_lifetime`` s (15 minutes) after the interaction's snowflake time, as Discord
counts, or at once with :meth:`Interactions.kill_token`; from then on every call made
with it (callback, ``@original`` and follow-up GET/PATCH/DELETE, follow-up POST) gets 401
code 50027 "Invalid Webhook Token", and each such call after a token's first refusal is
listed by :meth:`Interactions.dead_token_calls`. Non-ephemeral responses stay the bot's
own channel messages: edited or deleted through the channel routes (bot token), the
change shows in :class:`Injected` too. The JSON bodies of callbacks, edits and follow-ups
are checked against Discord's spec (:mod:`.spec`).

:meth:`Interactions.fill_channel` posts many members' messages at once (no HTTP calls), for
tests that page through a busy channel.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.emulators.discord.base import EmulatorError
from tests.emulators.discord.rest import Reply, Rest, json_response, public
from tests.emulators.discord.spec import callback_data_route
from tests.emulators.discord.world import (
    DEFAULT_UPLOAD_LIMIT,
    Channel,
    Member,
    Role,
    User,
    iso,
    snowflake,
    snowflake_time,
)
from tests.support.images import png

ACK_DEADLINE = 3.0  # seconds Discord waits for an interaction's first answer
TOKEN_LIFETIME = 15 * 60.0  # seconds an interaction token works for webhook calls
# Python types of the plain option kinds: STRING, INTEGER, BOOLEAN, NUMBER.
_OPTION_TYPES: dict[int, type | tuple[type, ...]] = {3: str, 4: int, 5: bool, 10: (int, float)}


@dataclass
class Injected:
    """An interaction the test sent, and what the bot answered."""

    emulator: Interactions
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
    token_killed: bool = False  # set by Interactions.kill_token
    token_refused_at: float | None = None  # monotonic time of the token's first 401

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
        name, data = msg["_files"][0]
        return str(name), bytes(data)


class Interactions(Rest):
    """Injected interactions and the routes the bot answers them through."""

    def __init__(self, *, token: str) -> None:
        super().__init__(token=token)
        self.ack_deadline = ACK_DEADLINE
        self.token_lifetime = TOKEN_LIFETIME
        self.interactions: dict[int, Injected] = {}
        self._by_token: dict[str, Injected] = {}
        self._by_message: dict[int, Injected] = {}  # responses and follow-ups, by message id
        self._deleted: set[int] = set()  # responses and follow-ups deleted, by message id
        self._refused_tokens: set[str] = set()  # tokens already answered 401 once
        self._dead_calls: list[tuple[str, str, str]] = []  # (token, method, path) after that

    async def _route_interactions(
        self, method: str, path: str, api: str, body: Any, files: list[tuple[str, bytes]]
    ) -> web.Response | None:
        app = str(self.application_id)
        if m := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", api):
            self._check_body("interaction callback", method, path, body)
            if isinstance(body, dict) and (route := callback_data_route(body.get("type"))):
                self._check_body(route, method, path, body.get("data"))
            return await self._callback(int(m[1]), m[2], body, files, method, path)
        if m := re.fullmatch(rf"/webhooks/{app}/([^/]+)/messages/(@original|\d+)", api):
            if method == "PATCH":
                self._check_body("edit webhook message", method, path, body)
            return self._webhook_message(method, path, m[1], m[2], body, files)
        if (m := re.fullmatch(rf"/webhooks/{app}/([^/]+)", api)) and method == "POST":
            self._check_body("execute webhook", method, path, body)
            return self._followup(method, path, m[1], body, files)
        return None

    # -- interaction tokens ------------------------------------------------------------

    def kill_token(self, it: Injected) -> None:
        """Make ``it``'s token dead now: every later call with it gets 401 code 50027."""
        it.token_killed = True

    def token_dead(self, it: Injected) -> bool:
        """Whether Discord would refuse ``it``'s token now (killed, or past its lifetime)."""
        return it.token_killed or time.time() - snowflake_time(it.id) > self.token_lifetime

    def dead_token_calls(self, it: Injected | None = None) -> list[tuple[str, str]]:
        """``(method, path)`` of every call made with a token after that token's first
        401 (of ``it``'s token only, when given), in order: a bot that takes Discord's
        first "Invalid Webhook Token" as final makes none."""
        return [
            (method, path)
            for token, method, path in self._dead_calls
            if it is None or token == it.token
        ]

    def _refuse_dead_token(self, it: Injected, method: str, path: str) -> None:
        """Answer 401 code 50027 when ``it``'s token is dead, recording the call."""
        if not self.token_dead(it):
            return
        if it.token in self._refused_tokens:
            self._dead_calls.append((it.token, method, path))
        else:
            self._refused_tokens.add(it.token)
            it.token_refused_at = time.monotonic()
        raise Reply(json_response({"message": "Invalid Webhook Token", "code": 50027}, status=401))

    # -- responses ---------------------------------------------------------------------

    def _interaction(self, token: str) -> Injected:
        it = self._by_token.get(token)
        if it is None:
            raise Reply(json_response({"message": "Unknown Webhook", "code": 10015}, status=404))
        return it

    def _metadata(self, it: Injected) -> dict[str, Any]:
        """The ``interaction_metadata`` Discord puts on ``it``'s response messages."""
        owner = it.channel.guild_id or self.guild.id
        meta: dict[str, Any] = {
            "id": str(it.id),
            "type": it.type,
            "user": it.user.payload(),
            "authorizing_integration_owners": {"0": str(owner)},
        }
        if it.original is not None:
            meta["original_response_message_id"] = it.original["id"]
        if it.message_id is not None:
            meta["interacted_message_id"] = str(it.message_id)
        return meta

    def _channel_message_edited(self, message: dict[str, Any]) -> None:
        it = self._by_message.get(int(message["id"]))
        if it is None:
            return
        if it.original is not None and it.original["id"] == message["id"]:
            it.original = message
            it.edits.append(message)
        else:
            it.followups = [message if f["id"] == message["id"] else f for f in it.followups]

    def _channel_message_deleted(self, message: dict[str, Any]) -> None:
        it = self._by_message.get(int(message["id"]))
        if it is None:
            return
        self._deleted.add(int(message["id"]))
        if it.original is not None and it.original["id"] == message["id"]:
            it.deleted = True

    async def _callback(
        self,
        interaction_id: int,
        token: str,
        body: Any,
        files: list[tuple[str, bytes]],
        method: str = "POST",
        path: str = "",
    ) -> web.Response:
        it = self.interactions.get(interaction_id)
        if it is None or it.token != token:
            return json_response({"message": "Unknown interaction", "code": 10062}, status=404)
        try:
            self._refuse_dead_token(it, method, path)
        except Reply:
            it.ack_status = 401
            raise
        if it.ack_type is not None:
            return json_response(
                {"message": "Interaction has already been acknowledged.", "code": 40060},
                status=400,
            )
        if time.monotonic() - it.sent_at > self.ack_deadline:
            it.ack_status = 404
            return json_response({"message": "Unknown interaction", "code": 10062}, status=404)
        self._check_upload(files, it.upload_limit)
        kind = int(body["type"])
        it.ack_type, it.ack_at, it.ack_status = kind, time.monotonic(), 200
        data = body.get("data") or {}
        message: dict[str, Any] | None = None
        if kind == 4:  # CHANNEL_MESSAGE_WITH_SOURCE
            message = self._new_message(it.channel, data, files, self._metadata(it))
            it.original = message
            it.edits.append(message)
            self._by_message[int(message["id"])] = it
        elif kind == 5:  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
            message = self._new_message(
                it.channel,
                {"content": "", "flags": data.get("flags", 0)},
                [],
                self._metadata(it),
            )
            message["flags"] = (data.get("flags") or 0) | 128  # LOADING
            it.original = message
            self._by_message[int(message["id"])] = it
        elif kind in (6, 7) and it.message_id is not None:
            # DEFERRED_UPDATE_MESSAGE / UPDATE_MESSAGE: @original is the clicked message.
            target = it.channel.messages.get(it.message_id)
            if target is None:
                return json_response({"message": "Unknown Message", "code": 10008}, status=404)
            if kind == 7:
                target = self._apply_edit(target, data, files)
                it.channel.messages[it.message_id] = target
                it.edits.append(target)
                message = target
            it.original = target
        return json_response(
            {
                "interaction": {
                    "id": str(it.id),
                    "type": it.type,
                    "response_message_id": message["id"] if message else None,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool((data.get("flags") or 0) & 64),
                },
                "resource": {"type": kind, **({"message": public(message)} if message else {})},
            }
        )

    def _webhook_message(
        self,
        method: str,
        path: str,
        token: str,
        which: str,
        body: Any,
        files: list[tuple[str, bytes]],
    ) -> web.Response:
        it = self._interaction(token)
        self._refuse_dead_token(it, method, path)
        if it.original is not None and which == str(it.original["id"]):
            which = "@original"  # the original response by its id, as Discord allows
        if which == "@original":
            if it.original is None or it.deleted:
                return json_response({"message": "Unknown Message", "code": 10008}, status=404)
            target = it.original
        else:
            found = [f for f in it.followups if f["id"] == which]
            if not found or int(which) in self._deleted:
                return json_response({"message": "Unknown Message", "code": 10008}, status=404)
            target = found[0]
        if method == "GET":
            return json_response(public(target))
        if method == "DELETE":
            if which == "@original":
                it.deleted = True
            self._deleted.add(int(target["id"]))
            it.channel.messages.pop(int(target["id"]), None)
            return web.Response(status=204)
        if method == "PATCH":
            self._check_upload(files, it.upload_limit)
            updated = self._apply_edit(target, body or {}, files)
            if which == "@original":
                it.original = updated
                it.edits.append(updated)
            else:
                it.followups = [updated if f["id"] == which else f for f in it.followups]
            if int(updated["id"]) in it.channel.messages:  # ephemeral messages are not there
                it.channel.messages[int(updated["id"])] = updated
            return json_response(public(updated))
        self.unimplemented.append(f"{method} webhook message")
        return json_response({"message": "405"}, status=405)

    def _followup(
        self, method: str, path: str, token: str, body: Any, files: list[tuple[str, bytes]]
    ) -> web.Response:
        it = self._interaction(token)
        self._refuse_dead_token(it, method, path)
        self._check_upload(files, it.upload_limit)
        message = self._new_message(it.channel, body or {}, files, self._metadata(it))
        it.followups.append(message)
        self._by_message[int(message["id"])] = it
        return json_response(public(message))

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
        who = member or self.default_member(chan)
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
        expected = _OPTION_TYPES.get(kind)
        if expected is None or not isinstance(value, expected):
            raise EmulatorError(f"/{command} {key}: {value!r} does not fit option type {kind}")
        if ("min_value" in spec and value < spec["min_value"]) or (
            "max_value" in spec and value > spec["max_value"]
        ):
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
        author = author or self.default_member(chan) or self.alice
        message: dict[str, Any] = {
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

    def fill_channel(
        self,
        count: int,
        *,
        channel: Channel | None = None,
        authors: Sequence[Member] | None = None,
        content: str = "message {n}",
    ) -> list[dict[str, Any]]:
        """``count`` messages posted in ``channel`` by ``authors`` in turn (default: the
        guild's members who are not bots), each newer than every message before it, stored
        at once without HTTP calls; oldest first. ``content`` is formatted with ``n``, the
        message's index."""
        chan = channel or self.channel
        guild = self.guild_of(chan)
        people = list(authors or (guild.humans if guild is not None else [self.alice]))
        return [
            self.user_message(people[n % len(people)], content=content.format(n=n), channel=chan)
            for n in range(count)
        ]

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
        attachments = [self.image_attachment(name, data) for name, data in pairs]
        if text_file is not None:
            attachments.append(
                self.attachment(text_file[1], text_file[0], "text/plain; charset=utf-8")
            )
        embeds = []
        for name, data in embedded:
            hosted = self.image_attachment(name, data)
            media = {k: hosted[k] for k in ("url", "proxy_url", "width", "height")}
            kind = "rich" if embed_field == "image" else "image"
            embeds.append({"type": kind, "url": hosted["url"], embed_field: media})
        return self.user_message(
            author, attachments=attachments, embeds=embeds, content=content, channel=channel
        )

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
        who = member or self.default_member(channel)
        payload, it = self._base_interaction(2, who, channel, upload_limit, age, locale)
        payload["data"] = {
            "id": command["id"],
            "name": name,
            "type": 3,
            "target_id": message["id"],
            "resolved": {"messages": {message["id"]: public(message)}},
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
        who = member or self.default_member(channel)
        payload, it = self._base_interaction(3, who, channel, DEFAULT_UPLOAD_LIMIT, 0, locale)
        payload["message"] = public(channel.messages.get(int(message["id"]), message))
        it.message_id = int(message["id"])
        payload["data"] = {"custom_id": custom_id, "component_type": 2}
        return await self._send(payload, it)


def _images(spec: int | Sequence[tuple[str, bytes]], stem: str) -> list[tuple[str, bytes]]:
    """``(filename, PNG bytes)`` pairs: ``spec`` itself, or that many small distinct PNGs."""
    if not isinstance(spec, int):
        return list(spec)
    return [
        (
            f"{stem}{n + 1}.png",
            png((64 + 8 * n, 48 + 4 * n), (40 * n % 256, 200 - 30 * n % 200, 90)),
        )
        for n in range(spec)
    ]


def find_button(
    message: dict[str, Any], predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first component of ``message`` for which ``predicate`` holds."""
    for row in message.get("components", []):
        component: dict[str, Any]
        for component in row.get("components", []):
            if predicate(component):
                return component
    raise EmulatorError("no such button")
