"""The journal of acknowledged interactions: no member is left "thinking" by a restart.

``/upscale`` and **Upscale image** acknowledge first (Discord allows 3 s), then record
their jobs (:meth:`bot.jobs.JobQueue.accept`). A process killed between the two, which a
database stall can stretch to seconds, would leave no job and a reply that says
"thinking…" for good. So before it acknowledges, the command appends a line here with
what is needed to answer the member from a later start (application id, token, the
interaction's time, guild, channel, member, locales) and the ids its jobs will be
recorded under; once every job is recorded or refused and the member answered, a
``done`` line.

The next start of the same process reads the journal before its queue claims anything
(:func:`answer_unrecorded`, as :mod:`cogs.upscale` loads): for each interaction not
done, it looks its job ids up in the database. None recorded: the member is told once,
in their language, that nothing was charged and to try again (in the deferred reply
while its token lives, else in the channel, naming them:
:meth:`bot.frontend.replies.Replies.post`). One recorded: the queue has it and answers.
Either way the interaction is then done.

One file per process, named by its shards (what names a process across restarts), in a
folder of its spool (:func:`journal_path`). A line is one ``write(2)`` and no fsync: the
operating system's page cache keeps it when the process dies, kill -9 included, which is
what the journal is for (a crash of the machine itself may lose the last lines). Lines
are written on the event loop: a few hundred bytes into the page cache, where a thread
hop could wait behind image work in the default executor while the 3 s run. A line torn
by a death mid-write, or anything else that is not a journal line, is skipped when read.
The file is rewritten with the interactions not done (those in flight: a few) when the
process starts and every :data:`COMPACT_EVERY` lines. It holds interaction tokens
(credentials for 15 minutes), so it is readable by the bot's user only; no token is
logged.

A journal that cannot be written (a full or read-only disk) logs one WARNING and lets
the commands go on: it is a safety net, never a reason to refuse a member.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from discord.webhook.async_ import async_context

from bot.db.outages import report_db_outage
from bot.frontend.replies import Replies, ReplyTarget
from bot.i18n import Text
from bot.ledger import guild_lock

if TYPE_CHECKING:
    from bot.db import Database
    from bot.frontend.client import Interaction, UpscaleBot
    from bot.jobs.store import JobStore

log = logging.getLogger(__name__)

COMPACT_EVERY = 1000  # lines appended between two rewrites of the file
FILE_MODE = 0o600  # the file holds interaction tokens
NOT_TAKEN = Text.of("restart.not_taken")


def journal_path(spool_dir: Path, shard_ids: Collection[int] | None) -> Path:
    """The journal of the process running ``shard_ids`` (all shards when None), in a folder
    of its spool: the queue clears the spool's own files at start-up, not its folders."""
    shards = "-".join(str(s) for s in sorted(shard_ids)) if shard_ids else "all"
    return spool_dir / "journal" / f"acks-{shards}.jsonl"


_JOURNALS: weakref.WeakKeyDictionary[UpscaleBot, AckJournal] = weakref.WeakKeyDictionary()


def journal_of(bot: UpscaleBot) -> AckJournal:
    """The journal of ``bot``'s process, shared by its commands (opened by the upscale
    cog when it loads: :mod:`cogs.upscale`)."""
    journal = _JOURNALS.get(bot)
    if journal is None:
        path = journal_path(bot.queue.spool_dir, bot.settings.shard_ids)
        journal = _JOURNALS[bot] = AckJournal(path)
    return journal


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """One acknowledged interaction: where to answer it, and the jobs it will record."""

    interaction_id: int
    application_id: int
    token: str
    created_at: float  # Unix seconds (the interaction's snowflake time)
    guild_id: int
    channel_id: int
    member_id: int
    job_ids: tuple[str, ...]
    locale: str | None = None  # the member's Discord language
    guild_locale: str | None = None  # the server's preferred language
    message_id: int | None = None  # the deferred reply, once Discord gave its id

    @classmethod
    def of(cls, interaction: Interaction, job_ids: Sequence[str]) -> Acknowledged:
        target = ReplyTarget.from_interaction(interaction)
        return cls(
            interaction_id=interaction.id,
            application_id=target.application_id,
            token=target.token,
            created_at=target.created_at,
            guild_id=interaction.guild_id or 0,
            channel_id=target.channel_id,
            member_id=target.member_id,
            job_ids=tuple(job_ids),
            locale=target.locale,
            guild_locale=target.guild_locale,
        )

    def target(self) -> ReplyTarget:
        """Where to answer the member (the deferred reply while the token lives)."""
        return ReplyTarget(
            application_id=self.application_id,
            token=self.token,
            created_at=self.created_at,
            channel_id=self.channel_id,
            member_id=self.member_id,
            message_id=self.message_id,
            locale=self.locale,
            guild_locale=self.guild_locale,
        )

    def to_line(self) -> dict[str, Any]:
        return {
            "ack": self.interaction_id,
            "app": self.application_id,
            "token": self.token,
            "at": self.created_at,
            "guild": self.guild_id,
            "channel": self.channel_id,
            "member": self.member_id,
            "jobs": list(self.job_ids),
            "locale": self.locale,
            "guild_locale": self.guild_locale,
            "msg": self.message_id,
        }

    @classmethod
    def from_line(cls, data: dict[str, Any]) -> Acknowledged:
        """Read :meth:`to_line`'s form; raises KeyError, TypeError or ValueError."""
        return cls(
            interaction_id=int(data["ack"]),
            application_id=int(data["app"]),
            token=str(data["token"]),
            created_at=float(data["at"]),
            guild_id=int(data["guild"]),
            channel_id=int(data["channel"]),
            member_id=int(data["member"]),
            job_ids=tuple(str(j) for j in data["jobs"]),
            locale=data.get("locale"),
            guild_locale=data.get("guild_locale"),
            message_id=int(data["msg"]) if data.get("msg") else None,
        )


class AckJournal:
    """This process's journal of acknowledged interactions (see the module docstring).

    :meth:`open` once at start-up; then :meth:`acknowledged` before each
    acknowledgement, :meth:`deferred` when Discord gives the reply's id, :meth:`done`
    when the command has finished; :meth:`close` at the end. Before :meth:`open` (or
    when the file cannot be opened) nothing is written.
    """

    def __init__(self, path: Path, *, compact_every: int = COMPACT_EVERY) -> None:
        self.path = path
        self._compact_every = compact_every
        self._open: dict[int, Acknowledged] = {}  # not done, in the order acknowledged
        self._fd: int | None = None
        self._appended = 0  # lines appended since the file was last rewritten
        self._torn = False  # the last write may have left half a line
        self._failing = False  # the last write failed (its WARNING is logged)
        self._read = False  # the last run's lines were read (by the first open)

    @property
    def pending(self) -> list[Acknowledged]:
        """The interactions acknowledged and not done, oldest first."""
        return list(self._open.values())

    def open(self) -> list[Acknowledged]:
        """Read what the last run left, rewrite the file with the interactions not done,
        and start appending; returns those interactions, oldest first. Opened again
        (after :meth:`close`), it reads nothing and returns none: what it holds then is
        this process's own.

        Blocking file I/O: call it in a thread. On an OSError the journal stays closed
        (one WARNING): the process runs without it.
        """
        if self._fd is not None:
            return []
        first, self._read = not self._read, True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if first:
                self._open = read_journal(self.path)
            self._rewrite()
        except OSError as exc:
            log.warning(
                "Cannot open the journal of acknowledged interactions %s (%s); running"
                " without it: a kill between an acknowledgement and its job's record"
                " leaves that member unanswered",
                self.path,
                exc.strerror or exc,
            )
            self.close()
        return self.pending if first else []

    def acknowledged(self, ack: Acknowledged) -> None:
        """Journal ``ack`` before acknowledging it."""
        self._open[ack.interaction_id] = ack
        self._append(ack.to_line())

    def deferred(self, interaction_id: int, message_id: int) -> None:
        """Discord gave the deferred reply's id: a later start edits that reply."""
        ack = self._open.get(interaction_id)
        if ack is not None:
            self._open[interaction_id] = replace(ack, message_id=message_id)
            self._append({"deferred": interaction_id, "msg": message_id})

    def done(self, interaction_id: int) -> None:
        """The interaction needs nothing more from the journal: its jobs are recorded or
        refused, and its member answered."""
        if self._open.pop(interaction_id, None) is not None:
            self._append({"done": interaction_id})
            if self._appended >= self._compact_every:
                self._compact()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _append(self, line: dict[str, Any]) -> None:
        if self._fd is None:
            return
        data = json.dumps(line, separators=(",", ":")).encode() + b"\n"
        if self._torn:  # end the half line first, so this one reads on its own
            data = b"\n" + data
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            self._torn = True
            self._warn(exc)
            return
        self._torn = written < len(data)
        if self._torn:
            self._warn(OSError(f"{written} of {len(data)} bytes written"))
            return
        self._appended += 1
        if self._failing:
            self._failing = False
            log.info("The journal of acknowledged interactions is written again")

    def _warn(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "Cannot write the journal of acknowledged interactions %s (%s); commands"
                " go on without it",
                self.path,
                exc.strerror or exc,
            )

    def _compact(self) -> None:
        """Rewrite the file with the interactions not done (on the event loop: a few
        lines, written and renamed over the journal)."""
        try:
            self._rewrite()
        except OSError as exc:
            self._warn(exc)

    def _rewrite(self) -> None:
        temporary = self.path.with_name(self.path.name + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            lines = (
                json.dumps(a.to_line(), separators=(",", ":")) + "\n" for a in self._open.values()
            )
            data = memoryview("".join(lines).encode())
            while data:  # a short write (a full disk) raises on the next try
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._appended = 0
        self._torn = False


def read_journal(path: Path) -> dict[int, Acknowledged]:
    """The interactions ``path`` holds that are not done, by id, in the order
    acknowledged; a missing file holds none. Lines that do not read (one torn by a death
    mid-write) are skipped, with one WARNING giving their count."""
    try:
        text = path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return {}
    found: dict[int, Acknowledged] = {}
    skipped = 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            if "ack" in line:
                ack = Acknowledged.from_line(line)
                found[ack.interaction_id] = ack
            elif "deferred" in line:
                key = int(line["deferred"])
                if key in found:
                    found[key] = replace(found[key], message_id=int(line["msg"]))
            elif "done" in line:
                found.pop(int(line["done"]), None)
            else:
                skipped += 1
        except (ValueError, KeyError, TypeError):  # JSONDecodeError is a ValueError
            skipped += 1
    if skipped:
        log.warning("Skipped %d unreadable lines of the journal %s", skipped, path)
    return found


async def recorded(db: Database, store: JobStore, ack: Acknowledged) -> bool:
    """True when one of ``ack``'s jobs is recorded.

    The guild's lock is taken first, as :meth:`bot.jobs.JobQueue.accept` takes it for
    the transaction that records a job: a transaction of the dead process that the
    database has not finished yet (its COMMIT held by a stalled disk) is finished when
    the lock is ours, so its job is seen, or is never recorded.
    """
    async with db.transaction() as tx:
        await tx.lock(guild_lock(ack.guild_id))
    for job_id in ack.job_ids:  # a whole id read as its own prefix: the primary key
        if await store.views.find_by_shown_id(job_id):
            return True
    return False


async def deferred_reply(client: discord.Client, target: ReplyTarget) -> int | None:
    """The id of the reply Discord made for the acknowledgement, asked with the token
    (``GET /webhooks/{application}/{token}/messages/@original``, as discord.py's
    :meth:`discord.Interaction.original_response` asks it): a process killed after
    Discord took the acknowledgement but before it heard back journaled no id. None when
    the token is past its time or Discord does not say."""
    if target.expired():
        return None
    webhook = discord.Webhook.partial(target.application_id, target.token, client=client)
    try:
        data = await async_context.get().get_original_interaction_response(
            application_id=target.application_id,
            token=target.token,
            session=webhook.session,
            proxy=webhook.proxy,
            proxy_auth=webhook.proxy_auth,
        )
    except discord.HTTPException as exc:
        log.info("Could not find the reply of member %s: HTTP %s", target.member_id, exc.status)
        return None
    return int(data["id"])


async def answer_unrecorded(
    journal: AckJournal,
    acks: Sequence[Acknowledged],
    *,
    db: Database,
    store: JobStore,
    client: discord.Client,
) -> int:
    """Answer the members of ``acks`` (the interactions the last run acknowledged and did
    not finish) whose jobs were never recorded; returns how many were told. The answer
    replaces "thinking" in the member's reply while the token lives, else it is a channel
    message naming them.

    Each interaction is then done in the journal. A database that does not answer stops
    the walk (one WARNING): the interactions left stay for the next start.
    """
    told = 0
    for ack in acks:
        try:
            if await recorded(db, store, ack):
                journal.done(ack.interaction_id)
                continue
        except Exception as exc:
            report_db_outage(log, "looking up the jobs of acknowledged interactions", exc)
            return told
        log.info(
            "Member %s was acknowledged before a restart and no job of theirs was recorded;"
            " telling them to try again",
            ack.member_id,
        )
        target = ack.target()
        if target.message_id is None:
            target = replace(target, message_id=await deferred_reply(client, target))
        await Replies(client).tell(target, NOT_TAKEN, nonce=f"ack{ack.interaction_id}")
        journal.done(ack.interaction_id)
        told += 1
    return told
