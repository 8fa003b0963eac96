"""The one way the bot answers a member: edit the deferred reply, or post in the channel.

Every answer goes through here, whether the interaction is fresh, deferred, or its
15-minute token has expired, and whether or not this process is the one that received
the interaction: a :class:`ReplyTarget` holds what is needed (application id, token,
the deferred reply's message id, channel, member, locales) and can be stored with a job
and rebuilt in any process. While the token lives, the deferred reply is edited through
the interaction webhook; after that the answer is a channel message that mentions the
member.

Discord's word on a token is final. The first 401 / 50027 ("Invalid Webhook Token") from
any call with a token marks it dead in this process (:data:`DEAD_TOKENS`) and is handed
to ``on_token_dead`` (the job queue records it with the job, so every process knows); no
further call is made with it: no edit, no look-up, no upload. The bot's own clock is a
second guard: past 15 minutes (less a margin) the token is treated as dead without
asking. A channel post carries a nonce (``enforce_nonce``), so a post retried within
Discord's "past few minutes" returns the message already created instead of a second one.

Languages: an answer is given as words not yet rendered (a :class:`bot.i18n.Text`, a
callable taking the catalogue language, or a :data:`Compose` for a whole message). The
edit of the member's own reply is written in the member's Discord language
(``target.locale``); a channel post, which the whole server reads, in the server's
preferred language (``target.guild_locale``). :meth:`Replies.post` is the one place
that chooses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import discord

from bot.i18n import Text, resolve

if TYPE_CHECKING:
    from bot.frontend.client import Interaction

log = logging.getLogger(__name__)

# Interaction tokens live 15 minutes; stop using them a little earlier (seconds).
TOKEN_LIFETIME = 15 * 60
TOKEN_SAFETY_MARGIN = 30
# Discord error codes that mean the interaction token can no longer be used.
INVALID_WEBHOOK_TOKEN = 50027
UNKNOWN_WEBHOOK = 10015
TOKEN_GONE_CODES = frozenset({INVALID_WEBHOOK_TOKEN, UNKNOWN_WEBHOOK})
# Looking for an earlier post: the channel's messages after the job began, oldest first,
# in pages of 100 (Discord's largest), at most this many pages. Past that bound (a
# channel with more than 1,000 messages between the job's start and its post) the
# result is posted once more; it is charged once all the same.
HISTORY_PAGE = 100
HISTORY_PAGES = 10
NONCE_CHARS = 25  # Discord's longest string nonce


class DeadTokens:
    """Interaction tokens Discord refused in this process (bounded: the oldest are
    forgotten first; a token is useless after 15 minutes anyway)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._tokens: OrderedDict[str, None] = OrderedDict()

    def add(self, token: str) -> bool:
        """Mark ``token`` dead; True the first time."""
        if not token or token in self._tokens:
            return False
        self._tokens[token] = None
        while len(self._tokens) > self._capacity:
            self._tokens.popitem(last=False)
        return True

    def __contains__(self, token: object) -> bool:
        return token in self._tokens


DEAD_TOKENS = DeadTokens()


def token_refused(exc: discord.HTTPException) -> bool:
    """True when Discord says the interaction token can no longer be used."""
    return exc.code in TOKEN_GONE_CODES or exc.status == 401


Words: TypeAlias = Text | Callable[[str], str]
"""Words for a member, rendered in a catalogue language ("de", "en-US"...) when sent."""


def render(words: Words, language: str) -> str:
    """``words`` in ``language``."""
    return words.render(language) if isinstance(words, Text) else words(language)


@dataclass(frozen=True, slots=True)
class Answer:
    """One message, in one language, ready to send."""

    content: str
    embed: discord.Embed | None = None
    view: discord.ui.View | None = None


Compose: TypeAlias = Callable[[str, str | None], Answer]
"""Builds an answer in a catalogue language. The second argument is None when the
member's own reply is edited, and the member's mention (``<@id>``) for a channel post,
which must name them."""


def saying(words: Words) -> Compose:
    """A text-only answer: the words, after the member's mention in a channel post."""

    def compose(language: str, mention: str | None) -> Answer:
        text = render(words, language)
        return Answer(f"{mention} {text}" if mention else text)

    return compose


@dataclass(frozen=True, slots=True)
class JobContext:
    """What the front end keeps with a job to answer the member later, from any process.

    The queue stores it with the job as an opaque string (:meth:`to_json`) and hands it
    back with the job in any process (:meth:`from_json`); every field is named here, so
    a typo fails where it is written, not hours later at delivery in another process.
    The interaction token is not part of it: it is a credential that expires after 15
    minutes, kept by the queue apart and erased when the job ends. Nor are the member's
    roles: the queue keeps them itself (the ledger's role limits).
    """

    application_id: int
    interaction_at: float  # Unix seconds: when the member asked (the token's birth)
    message_id: int | None = None  # the deferred reply, when known
    locale: str | None = None  # the member's Discord language
    guild_locale: str | None = None  # the server's preferred language
    upload_limit: int | None = None  # bytes the reply may carry (None: Discord's default)
    source_link: str | None = None  # the message the image came from (context menu)

    def to_json(self) -> str:
        return json.dumps(
            {
                "app": self.application_id,
                "at": self.interaction_at,
                "msg": self.message_id,
                "locale": self.locale,
                "guild_locale": self.guild_locale,
                "limit": self.upload_limit,
                "source": self.source_link,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> JobContext:
        """Read :meth:`to_json`'s form; also the context of rows written by earlier
        versions, which kept these fields in the same object with others (the member's
        roles, the token), ignored here."""
        data: dict[str, Any] = json.loads(text) if text else {}
        return cls(
            application_id=int(data.get("app") or 0),
            interaction_at=float(data.get("at") or 0.0),
            message_id=int(data["msg"]) if data.get("msg") else None,
            locale=data.get("locale"),
            guild_locale=data.get("guild_locale"),
            upload_limit=int(data["limit"]) if data.get("limit") else None,
            source_link=str(data["source"]) if data.get("source") else None,
        )


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where and how to answer one interaction, from any process."""

    application_id: int
    token: str
    created_at: float  # Unix seconds (the interaction's snowflake time)
    channel_id: int
    member_id: int
    message_id: int | None = None  # the deferred reply, once known
    locale: str | None = None  # the member's Discord language
    guild_locale: str | None = None  # the server's preferred language

    subject: str | None = None  # what the answer is about (a job id), for on_token_dead

    def expired(self, margin: float = TOKEN_SAFETY_MARGIN) -> bool:
        """True when the token must not be used: unknown, refused by Discord (in this
        process, or recorded with the job), or (nearly) past its 15 minutes."""
        return (
            not self.token
            or self.token in DEAD_TOKENS
            or time.time() - self.created_at >= TOKEN_LIFETIME - margin
        )

    def without_token(self) -> ReplyTarget:
        return replace(self, token="")

    @property
    def member_language(self) -> str:
        """The catalogue language of the member's own reply (English when unsupported)."""
        return resolve(self.locale)

    @property
    def channel_language(self) -> str:
        """The catalogue language of a channel post: the server's preferred one."""
        return resolve(self.guild_locale)

    @classmethod
    def from_interaction(
        cls, interaction: Interaction, message_id: int | None = None
    ) -> ReplyTarget:
        return cls(
            application_id=interaction.application_id,
            token=interaction.token,
            created_at=interaction.created_at.timestamp(),
            channel_id=interaction.channel_id or 0,
            member_id=interaction.user.id,
            message_id=message_id,
            locale=str(interaction.locale),
            guild_locale=str(interaction.guild_locale) if interaction.guild_locale else None,
        )

    def job_context(
        self, *, upload_limit: int | None = None, source_link: str | None = None
    ) -> str:
        """What a job keeps to answer from any process (the token is kept apart), as the
        queue stores it (:class:`JobContext`)."""
        return JobContext(
            application_id=self.application_id,
            interaction_at=self.created_at,
            message_id=self.message_id,
            locale=self.locale,
            guild_locale=self.guild_locale,
            upload_limit=upload_limit,
            source_link=source_link,
        ).to_json()

    @classmethod
    def for_job(
        cls,
        context: JobContext,
        token: str | None,
        *,
        channel_id: int,
        member_id: int,
        subject: str | None = None,
    ) -> ReplyTarget:
        """Where to answer a job's member; without a token (erased when the job ended,
        refused by Discord, or never known) only the channel is possible."""
        return cls(
            application_id=context.application_id,
            token=token or "",
            created_at=context.interaction_at,
            channel_id=channel_id,
            member_id=member_id,
            message_id=context.message_id,
            locale=context.locale,
            guild_locale=context.guild_locale,
            subject=subject,
        )

    @property
    def started_after(self) -> int:
        """A snowflake just before the interaction: everything posted for it comes after."""
        return discord.utils.time_snowflake(datetime.fromtimestamp(self.created_at - 1, tz=UTC))


class Replies:
    """Answers members through one client (its HTTP session and state).

    ``on_token_dead(target)`` is called once per token when Discord first refuses it.
    """

    def __init__(
        self,
        client: discord.Client,
        on_token_dead: Callable[[ReplyTarget], None] | None = None,
    ) -> None:
        self._client = client
        self._on_token_dead = on_token_dead

    def _webhook(self, target: ReplyTarget) -> discord.Webhook:
        return discord.Webhook.partial(target.application_id, target.token, client=self._client)

    def _channel(self, target: ReplyTarget) -> discord.PartialMessageable:
        return self._client.get_partial_messageable(target.channel_id)

    def token_dead(self, target: ReplyTarget) -> None:
        """Discord refused ``target``'s token: never use it again (see the module)."""
        if DEAD_TOKENS.add(target.token):
            log.info(
                "Discord refused the interaction token for member %s%s; answering in the"
                " channel from now on",
                target.member_id,
                f" (job {target.subject})" if target.subject else "",
            )
            if self._on_token_dead is not None:
                self._on_token_dead(target)

    async def edit(
        self, target: ReplyTarget, *, margin: float = TOKEN_SAFETY_MARGIN, **fields: Any
    ) -> discord.Message | None:
        """Edit the deferred reply; None when the token can no longer be used."""
        if target.message_id is None or target.expired(margin):
            return None
        try:
            return await self._webhook(target).edit_message(target.message_id, **fields)
        except discord.HTTPException as exc:
            if token_refused(exc):
                self.token_dead(target)
                return None
            raise

    async def edit_reply_in_channel(self, target: ReplyTarget, **fields: Any) -> bool:
        """Edit the member's (non-ephemeral) reply with the bot token, through the channel
        message endpoint, once its interaction token is dead (see
        ``docs/interaction-tokens.md``). False when Discord refuses."""
        if target.message_id is None:
            return False
        try:
            await self._channel(target).get_partial_message(target.message_id).edit(**fields)
        except discord.HTTPException as exc:
            log.info("Could not edit the reply of member %s: HTTP %s", target.member_id, exc.status)
            return False
        return True

    async def post(
        self,
        target: ReplyTarget,
        compose: Compose,
        *,
        file: discord.File | None = None,
        nonce: str | None = None,
    ) -> discord.Message:
        """Edit the deferred reply while the token lives, else post in the channel.

        The edit is composed in the member's language; the channel post (mentioning the
        member) in the server's, with ``nonce`` (at most 25 characters; Discord returns
        the message already created with it in the past few minutes instead of a second
        one). Raises :class:`discord.HTTPException` when neither works.
        """
        if not target.expired() and target.message_id is not None:
            answer = compose(target.member_language, None)
            message = await self.edit(
                target,
                content=answer.content,
                embed=answer.embed,
                attachments=[file] if file is not None else [],
                view=answer.view,
            )
            if message is not None:
                return message
            if file is not None:
                file.reset()
        answer = compose(target.channel_language, f"<@{target.member_id}>")
        return await self._channel(target).send(
            answer.content,
            embed=answer.embed if answer.embed is not None else discord.utils.MISSING,
            file=file if file is not None else discord.utils.MISSING,
            view=answer.view if answer.view is not None else discord.utils.MISSING,
            allowed_mentions=discord.AllowedMentions(users=True),
            nonce=nonce[:NONCE_CHARS] if nonce else secrets.randbits(64),  # discord.py's own
        )

    async def tell(self, target: ReplyTarget, words: Words, *, nonce: str | None = None) -> None:
        """Best-effort text answer (failures are logged, never raised)."""
        try:
            await self.post(target, saying(words), nonce=nonce)
        except discord.HTTPException as exc:
            log.warning("Could not answer member %s: HTTP %s", target.member_id, exc.status)

    async def find(
        self,
        target: ReplyTarget,
        matches: Callable[[discord.Message], bool],
        *,
        pages: int = HISTORY_PAGES,
    ) -> discord.Message | None:
        """A message already posted for this interaction that ``matches``, if any.

        Looks at the deferred reply (through the token while it lives, else through the
        channel), then at the channel's messages after the interaction, oldest first, at
        most ``pages`` pages of 100. Raises :class:`discord.HTTPException` when Discord
        does not answer (not knowing is not "not posted").
        """
        channel = self._channel(target)
        if target.message_id is not None:
            reply: discord.Message | None = None
            with contextlib.suppress(discord.NotFound, discord.Forbidden):
                if not target.expired():
                    try:
                        reply = await self._webhook(target).fetch_message(target.message_id)
                    except discord.HTTPException as exc:
                        if not token_refused(exc):
                            raise
                        self.token_dead(target)
                if reply is None and target.expired():
                    reply = await channel.fetch_message(target.message_id)
            if reply is not None and matches(reply):
                return reply
        after = discord.Object(id=target.started_after)
        with contextlib.suppress(discord.NotFound, discord.Forbidden):
            async for message in channel.history(
                limit=pages * HISTORY_PAGE, after=after, oldest_first=True
            ):
                if matches(message):
                    return message
        return None


async def send_reply(
    interaction: Interaction,
    words: Words,
    *,
    ephemeral: bool = True,
) -> None:
    """Answer a live interaction: the initial response when fresh, else :meth:`Replies.post`.

    Written in the member's language. Deferred: edit the "thinking..." message while the
    token lives. Expired: a channel message mentioning the member, in the server's
    language.
    """
    target = ReplyTarget.from_interaction(interaction)
    content = render(words, target.member_language)
    if not interaction.response.is_done():
        await interaction.response.send_message(content, ephemeral=ephemeral)
        return
    if not target.expired():
        try:
            await interaction.edit_original_response(content=content)
            return
        except discord.HTTPException as exc:
            if not token_refused(exc):
                raise
            DEAD_TOKENS.add(target.token)
    if interaction.channel_id is None:
        log.warning("Could not reply to interaction %s: token expired, no channel", interaction.id)
        return
    await Replies(interaction.client).post(target, saying(words))
