"""The Discord front end of the job queue: progress, delivery and failure messages.

:class:`DiscordFrontEnd` implements :class:`bot.jobs.FrontEnd` for every job, in any
process: what it needs to answer the member is stored with the job (its
:class:`bot.frontend.replies.JobContext`, which the queue keeps without reading it, and
the interaction token), so a job resumed after a restart or taken over from another
process is answered exactly like a fresh one. Progress edits are throttled; results are
fitted under the interaction's upload limit in a worker process; a result that may
already have been posted (a crash during delivery) is looked for by its job id in the
embed footer before it is posted again.

Languages: progress lines and the result are written in the member's Discord language
when they edit the member's reply, and in the server's preferred language when they
are posted in the channel after the token expired (:meth:`bot.frontend.replies.Replies.post`).

Tokens. Discord's 401 / 50027 on a job's token is final: the front end has the queue
record it with the job (every process then answers through the channel), and a dead
token is never a reason to fail or refund. The "bot restarted; your upscale continues"
notice edits the member's reply while the token lives; with a dead token nothing is said
until the result, which names the member. A result or a failure posted in the channel
turns the member's reply into a link to it, without the Cancel button (through the
token while it lives, else through the channel: ``docs/interaction-tokens.md``). Channel
posts carry a nonce made from the job id, so a post retried within a few minutes is not
made twice; a result looked for after a restart is searched for in the channel's
messages after the job began (:meth:`bot.frontend.replies.Replies.find`); one found there
gets the member's reply linked to it, as a fresh delivery does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from bot import images
from bot.failures import FailureKind
from bot.frontend.replies import NONCE_CHARS, Answer, JobContext, Replies, ReplyTarget, saying
from bot.i18n import SUPPORTED, Text, number, t
from bot.jobs import DeliveryFailed, Job, JobFailure, JobResult, Progress, Stage
from bot.retry import Backoff, retry
from bot.timings import (
    FIRST_PROGRESS_DELAY,
    LOOKUP_BACKOFF,
    PLACE_INTERVAL_MAX,
    PLACE_INTERVAL_PER_PLACE,
    PROGRESS_INTERVAL,
)
from cogs import messages
from cogs.buttons import DeleteResultButton, cancel_view
from cogs.compare import CompareButton

if TYPE_CHECKING:
    from bot.frontend.client import UpscaleBot

log = logging.getLogger(__name__)

UPLOAD_MARGIN = 64 * 1024  # bytes kept free under the upload limit for the request body
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's default when the interaction did not say
CANCELLABLE = (Stage.RECEIVING, Stage.QUEUED, Stage.WAITING, Stage.UPLOADING)
LOOKUP_ATTEMPTS = 4  # tries to find out whether a result was already posted


def progress_interval(
    progress: Progress,
    base: float = PROGRESS_INTERVAL,
    per_place: float = PLACE_INTERVAL_PER_PLACE,
    most: float = PLACE_INTERVAL_MAX,
) -> float:
    """Seconds between progress edits while the job shows ``progress``: ``base``, but a
    place in the queue alone is edited at most every ``per_place`` x the place, and at
    least every ``most`` (see :data:`bot.timings.PLACE_INTERVAL_PER_PLACE`)."""
    if progress.stage is not Stage.QUEUED or progress.wait is not None or not progress.position:
        return base
    return min(max(base, most), max(base, progress.position * per_place))


def progress_lines(job: Job, progress: Progress, resumed: bool) -> str:
    """The progress text on the member's reply, in the member's language."""
    language = target_of(job).member_language  # progress only edits the member's reply
    since = messages.timestamp(job.created_at)
    lines = [messages.progress_text(progress, since).render(language)]
    if resumed:
        lines.insert(0, messages.RESUMED.render(language))
    if job.prepared is not None and job.prepared.notes:
        lines.append(messages.note_lines(job.prepared.notes, language))
    return "\n".join(lines)


def job_footer(job_id: str, language: str) -> str:
    """The result embed's footer: how a posted result is recognised later."""
    return t(language, "embed.footer", job=job_id[:8])


def job_footers(job_id: str) -> frozenset[str]:
    """The footer in every language (a result may have been posted in any of them)."""
    return frozenset(job_footer(job_id, language) for language in SUPPORTED)


def context_of(job: Job) -> JobContext:
    """What the front end keeps with ``job`` (stored by the queue as an opaque string)."""
    return JobContext.from_json(job.context)


def target_of(job: Job) -> ReplyTarget:
    return ReplyTarget.for_job(
        context_of(job),
        job.reply_token,
        channel_id=job.channel_id,
        member_id=job.member_id,
        subject=job.id,
    )


def result_nonce(job_id: str) -> str:
    """The nonce of a job's result post (at most 25 characters)."""
    return f"r{job_id}"[:NONCE_CHARS]


def failure_nonce(job_id: str) -> str:
    """The nonce of a job's failure post: not the result's, or Discord would answer a
    failure post with the result message."""
    return f"f{job_id}"[:NONCE_CHARS]


def message_link(guild_id: int, message: discord.Message) -> str:
    return f"https://discord.com/channels/{guild_id}/{message.channel.id}/{message.id}"


ShowCheck = Callable[[], Awaitable[bool]]
ShowUntil = Callable[[], float | None]


class ProgressDisplay:
    """Shows a job's place in line and stage on the deferred reply, throttled.

    The first edit waits ``first_delay``: Discord already shows "thinking…", and most
    jobs that start at once finish before a progress line would help; skipping those
    edits keeps REST traffic (and event-loop work) down during bursts. Each later edit
    comes at least the interval given with its text (:func:`progress_interval`) after
    the one before.

    Every edit is guarded: right before sending it, ``may_show`` reads the job's recorded
    state, and an edit for a job that another process claimed, or that has ended, is
    dropped and the display closed. A throttled edit that was waiting when the result
    was posted elsewhere therefore never replaces the result. And each edit, with the
    HTTP client's retries after a 429 or a 5xx, is cut off at ``until()`` (this process's
    lease on the job: a worker that lost the job sends nothing after it lapsed).
    """

    def __init__(
        self,
        replies: Replies,
        target: ReplyTarget,
        job_id: str,
        may_show: ShowCheck,
        interval: float = PROGRESS_INTERVAL,
        first_delay: float = FIRST_PROGRESS_DELAY,
        until: ShowUntil = lambda: None,
    ) -> None:
        self._replies = replies
        self._until = until
        self._target = target
        self._job_id = job_id
        self._may_show = may_show
        self._interval = interval
        self._latest: tuple[Hashable, bool] | None = None
        self._render: Callable[[], str] = str
        self._latest_interval = interval
        self._shown: tuple[Hashable, bool] | None = None
        self._first_due = time.monotonic() + first_delay
        self._last_edit: float | None = None
        self._cancel_view: discord.ui.View | None = None  # made once, shown on every edit
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0  # edits dropped because the job was no longer this display's

    @property
    def closed(self) -> bool:
        return self._closed

    def show(
        self,
        state: Hashable,
        render: Callable[[], str],
        cancellable: bool,
        interval: float | None = None,
    ) -> None:
        """Show the text ``render`` makes for ``state`` (with the Cancel button when
        ``cancellable``), at least ``interval`` s (default: the display's) after the
        previous edit. The text is made only when it is shown: a long line reports many
        places that are never shown."""
        if self._closed:
            return
        self._latest = (state, cancellable)
        self._render = render
        self._latest_interval = self._interval if interval is None else interval
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._pump(), name="upscale-progress")

    def _due(self) -> float:
        if self._last_edit is None:
            return self._first_due
        return self._last_edit + self._latest_interval

    async def _pump(self) -> None:
        while not self._closed and self._latest is not None and self._latest != self._shown:
            wait = self._due() - time.monotonic()
            if wait > 0:
                # In steps of at most the default interval: newer text may be due sooner
                # (a stage change, or a place near the front).
                await asyncio.sleep(min(wait, self._interval))
                continue
            if not await self._may_show():
                self.dropped += 1
                log.info("Job %s is no longer shown here; progress edit dropped", self._job_id)
                self._closed = True
                return
            if self.closed:  # closed while the check ran (the result is being posted)
                return
            shown, text = self._latest, self._render()
            view = self._view() if shown[1] else None
            until = self._until()
            try:
                async with asyncio.timeout(None if until is None else until - time.time()):
                    message = await self._replies.edit(self._target, content=text, view=view)
            except TimeoutError:
                log.info("Job %s: progress edit cut off (its lease ends)", self._job_id)
                message = None
            except discord.HTTPException as exc:
                log.info("Progress edit failed (%s); no more progress for this job", exc.status)
                message = None
            if message is None:
                self._closed = True
                return
            self._shown = shown
            self._last_edit = time.monotonic()

    def _view(self) -> discord.ui.View:
        if self._cancel_view is None:
            self._cancel_view = cancel_view(self._job_id, self._target.member_language)
        return self._cancel_view

    async def close(self) -> None:
        """Stop editing (before the final edit); waits for an edit in flight."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class DiscordFrontEnd:
    """Answers members about their jobs through Discord.

    It keeps one :class:`ProgressDisplay` per job it shows, and forgets it when the job
    ends anywhere in the fleet (the queue calls :meth:`stop_showing`), so a long-running process
    holds no state for jobs other processes delivered.
    """

    def __init__(
        self,
        bot: UpscaleBot,
        *,
        progress_interval: float = PROGRESS_INTERVAL,
        first_progress_delay: float = FIRST_PROGRESS_DELAY,
        place_interval_per_place: float = PLACE_INTERVAL_PER_PLACE,
        place_interval_max: float = PLACE_INTERVAL_MAX,
        lookup_backoff: float = LOOKUP_BACKOFF,
    ) -> None:
        """The waits default to members' (:mod:`bot.timings`); the upscale cog passes
        the bot's ``settings.timings`` (short in tests)."""
        self.bot = bot
        self.replies = Replies(bot, on_token_dead=self._token_dead)
        self.progress_interval = progress_interval
        self.first_progress_delay = first_progress_delay
        self.place_interval_per_place = place_interval_per_place
        self.place_interval_max = place_interval_max
        self.lookup_backoff = lookup_backoff
        self._displays: dict[str, ProgressDisplay] = {}
        self._resumed: set[str] = set()
        self._recording: set[asyncio.Task[None]] = set()

    @property
    def shown(self) -> int:
        """Jobs this process currently shows progress for."""
        return len(self._displays)

    def _display(self, job: Job) -> ProgressDisplay:
        display = self._displays.get(job.id)
        if display is None or display.closed:
            queue = self.bot.queue

            async def may_show() -> bool:
                return await queue.shows(job.id)

            display = ProgressDisplay(
                self.replies,
                target_of(job),
                job.id,
                may_show,
                self.progress_interval,
                self.first_progress_delay,
                until=lambda: queue.acting_until(job.id),
            )
            self._displays[job.id] = display
        return display

    def _token_dead(self, target: ReplyTarget) -> None:
        """Discord refused a job's token: record it with the job, for every process."""
        if target.subject is None:
            return
        task = asyncio.create_task(self._record_dead_token(target.subject))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record_dead_token(self, job_id: str) -> None:
        try:
            await self.bot.queue.forget_token(job_id)
        except Exception as exc:
            # This process knows already; another one would learn it from Discord.
            log.warning("Could not record job %s's dead token: %s", job_id, type(exc).__name__)

    async def _point_reply_to(
        self, job: Job, target: ReplyTarget, message: discord.Message, key: str
    ) -> None:
        """The result (or failure) went to the channel: the member's reply stops saying
        "waiting" and loses its Cancel button, and links to it instead. Best effort."""
        if target.message_id is None or message.id == target.message_id:
            return
        text = t(target.member_language, key, link=message_link(job.guild_id, message))
        try:
            if await self.replies.edit(target, margin=0, content=text, view=None) is not None:
                return
        except discord.HTTPException as exc:
            log.info("Could not update the reply of job %s: HTTP %s", job.id, exc.status)
            return
        await self.replies.edit_reply_in_channel(target, content=text, view=None)

    async def _close(self, job_id: str) -> None:
        self._resumed.discard(job_id)
        display = self._displays.pop(job_id, None)
        if display is not None:
            await display.close()

    # -- FrontEnd ----------------------------------------------------------------------

    def show_progress(self, job: Job, progress: Progress) -> None:
        resumed = job.id in self._resumed
        self._display(job).show(
            (progress, resumed),
            functools.partial(progress_lines, job, progress, resumed),
            progress.stage in CANCELLABLE,
            progress_interval(
                progress,
                self.progress_interval,
                self.place_interval_per_place,
                self.place_interval_max,
            ),
        )

    async def tell_resumed(self, job: Job) -> None:
        """Say once, on the member's reply, that the job continues; with a dead token
        nothing is said until the result (which names the member)."""
        target = target_of(job)
        if target.expired():
            return
        self._resumed.add(job.id)
        with contextlib.suppress(discord.HTTPException):
            content = messages.RESUMED.render(target.member_language)
            await self.replies.edit(target, content=content, view=None)

    async def tell_paused(self, job: Job) -> None:
        await self._close(job.id)
        target = target_of(job)
        with contextlib.suppress(discord.HTTPException):
            content = messages.PAUSED.render(target.member_language)
            await self.replies.edit(target, content=content, view=None)

    async def stop_showing(self, job_id: str) -> None:
        await self._close(job_id)

    async def tell_failed(self, job: Job, failure: JobFailure) -> None:
        await self._close(job.id)
        target = target_of(job)
        try:
            message = await self.replies.post(
                target, saying(messages.failure_text(failure)), nonce=failure_nonce(job.id)
            )
        except discord.HTTPException as exc:
            log.warning("Could not tell member %s: HTTP %s", job.member_id, exc.status)
            return
        await self._point_reply_to(job, target, message, "result.ended_in_channel")

    async def find_delivered(self, job: Job) -> int | None:
        """The result already posted for ``job``, if any. One found in the channel gets
        the member's reply linked to it, as :meth:`deliver` does: the process that posted
        it may have died before it did (the reply would go on showing progress, or
        "thinking")."""
        target = target_of(job)
        footers = job_footers(job.id)
        me = self.bot.user

        def is_result(message: discord.Message) -> bool:
            mine = me is None or message.author.id == me.id
            return mine and any(e.footer.text in footers for e in message.embeds)

        base = self.lookup_backoff
        backoff = Backoff(base=base, cap=4 * base, jitter=False)  # 2, 4, 8 s for members

        def wait(exc: discord.HTTPException, attempt: int) -> float | None:
            return backoff.delay(attempt) if attempt < LOOKUP_ATTEMPTS else None

        try:
            found = await retry(
                lambda: self.replies.find(target, is_result), discord.HTTPException, wait
            )
        except discord.HTTPException as exc:
            # Not knowing is not "not posted": never post again on a guess.
            raise DeliveryFailed(
                FailureKind.DELIVERY_ERROR, f"lookup failed: HTTP {exc.status}"
            ) from exc
        if found is None:
            return None
        log.info("Job %s had already been delivered (message %d)", job.id, found.id)
        await self._point_reply_to(job, target, found, "result.posted_in_channel")
        return found.id

    async def deliver(self, job: Job, result: JobResult) -> int | None:
        """Post the result, fitted under the interaction's upload limit."""
        await self._close(job.id)
        target = target_of(job)
        context = context_of(job)
        upload_limit = context.upload_limit or DEFAULT_UPLOAD_LIMIT
        limit = max(1024 * 1024, upload_limit - UPLOAD_MARGIN)
        stem = Path(job.input.filename).stem[:60] or "image"
        fitted = await self.bot.image_workers.fit(result.path, result.format, limit, f"{stem}_4x")
        balance = await self.bot.ledger.balance(job.guild_id, job.member_id, job.role_ids)
        mention = f"<@{job.member_id}>"

        def compose(language: str, channel_mention: str | None) -> Answer:
            embed = result_embed(job, result, fitted, balance.remaining, language)
            embed.set_image(url=f"attachment://{fitted.filename}")
            view = discord.ui.View(timeout=None)
            view.add_item(DeleteResultButton(job.member_id, language))
            if result.crops is not None:
                view.add_item(CompareButton(job.id, language))
            if fitted.reencoded or fitted.resized:
                label = t(language, "button.full_size")
                view.add_item(discord.ui.Button(label=label, url=result.temporary_url))
            if context.source_link:
                label = t(language, "button.source")
                view.add_item(discord.ui.Button(label=label, url=context.source_link))
            content = t(language, "result.ready", mention=mention) if channel_mention else mention
            return Answer(content, embed, view)

        buffer = io.BytesIO(fitted.data)
        file = discord.File(buffer, filename=fitted.filename)
        try:
            message = await self.replies.post(
                target, compose, file=file, nonce=result_nonce(job.id)
            )
        except discord.Forbidden as exc:
            raise DeliveryFailed(FailureKind.MISSING_PERMISSIONS, str(exc.code)) from exc
        except discord.HTTPException as exc:
            raise DeliveryFailed(
                FailureKind.DELIVERY_ERROR, f"HTTP {exc.status} code {exc.code}"
            ) from exc
        finally:
            # Free the buffer now (up to the upload limit; aiohttp made it copy the
            # bytes): discord.File leaves it in a reference cycle (its ``close`` set to
            # its own bound method) that only the cyclic GC would collect, much later.
            file.close()
            io.BytesIO.close(buffer)
        await self._point_reply_to(job, target, message, "result.posted_in_channel")
        return message.id


def result_embed(
    job: Job,
    result: JobResult,
    fitted: images.FittedImage,
    remaining: int | None,
    language: str,
) -> discord.Embed:
    """The delivered result's embed, in ``language``."""
    ow, oh = job.input.original_size
    nw, nh = fitted.size
    field = "embed.field."
    embed = discord.Embed(title=t(language, "embed.title"), colour=discord.Colour.green())
    embed.add_field(name=t(language, field + "size"), value=f"{ow}×{oh} → {nw}×{nh}")
    embed.add_field(name=t(language, field + "format"), value=fitted.format.upper())
    embed.add_field(
        name=t(language, field + "file_size"), value=file_size(language, len(fitted.data))
    )
    seconds = number(language, result.elapsed, decimals=1)
    embed.add_field(
        name=t(language, field + "time"), value=t(language, "unit.seconds", value=seconds)
    )
    if remaining is not None:
        embed.add_field(name=t(language, field + "credits_left"), value=number(language, remaining))
    notes: list[Text] = list(job.input.notes)
    if fitted.note:
        notes.append(fitted.note)
    if notes:
        embed.description = messages.note_lines(notes, language)
    embed.set_footer(text=job_footer(job.id, language))
    return embed


def file_size(language: str, count: int) -> str:
    """A file size with the language's decimal separator: 1.2 MB, de 1,2 MB."""
    if count >= images.BYTES_PER_MB:
        return t(language, "unit.mb", value=number(language, count / images.BYTES_PER_MB, 1))
    if count >= 1000:
        return t(language, "unit.kb", value=number(language, round(count / 1000)))
    return images.human_bytes(count)
