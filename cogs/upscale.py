"""``/upscale`` and the **Upscale image** message command: the Discord side of a job.

The cog acknowledges first, then downloads the image straight to the spool directory,
hands it to :class:`bot.jobs.JobQueue` and adapts the queue's callbacks to Discord:
throttled progress edits, delivery that fits the interaction's upload limit, and plain
failure messages. The delete button is a persistent dynamic item, so it keeps working
after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot import images
from bot.jobs import (
    DeliveryFailed,
    Job,
    JobFailure,
    JobRequest,
    JobResult,
    LimitReached,
    QueueClosed,
    QueueFull,
    Stage,
)
from bot.tree import UserError, token_expired
from cogs.checks import NOT_IN_DMS, is_moderator

if TYPE_CHECKING:
    from bot.client import UpscaleBot

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10, sock_read=30)
DOWNLOAD_CHUNK = 256 * 1024  # bytes read per chunk
WRITE_BATCH = 4 * 1024 * 1024  # bytes buffered before a write in a thread
PROGRESS_INTERVAL = 2.0  # seconds between progress edits, at least
FIRST_PROGRESS_DELAY = 1.0  # seconds before the first progress edit
UPLOAD_MARGIN = 64 * 1024  # bytes kept free under the upload limit for the request body
FORMATS = ("png", "jpeg", "webp")
FORMAT_CHOICES = [app_commands.Choice(name=f.upper(), value=f) for f in FORMATS]

STAGE_TEXT = {
    Stage.UPLOADING: "Uploading your image to the upscaler",
    Stage.UPSCALING: "Upscaling 4×",
    Stage.DOWNLOADING: "Fetching the result",
    Stage.DELIVERING: "Posting the result",
}

REFUNDED = "Your credits were refunded."
FAILURE_TEXT = {
    "unauthorized": "The upscaling service refused the bot's API key. "
    "Please ask a moderator to tell the bot owner.",
    "out_of_credits": "The upscaling service is out of credits. "
    "Please ask a moderator to let the bot owner know.",
    "rate_limited": "The upscaling service is busy right now.",
    "input_rejected": "The upscaling service could not process this image. Try a different image.",
    "unavailable": "The upscaling service is down right now. Try again in a few minutes.",
    "timeout": "The upscale took too long and was stopped. Try again later.",
    "bad_response": "The upscaling service sent back an unusable result. Try again later.",
    "bad_result": "The upscaling service sent back an unusable result. Try again later.",
    "download_refused": "The upscaling service sent back an unusable result. Try again later.",
    "too_large": "The upscaling service sent back an unusable result. Try again later.",
    "missing_permissions": "I can't post the result here: I need the **Attach Files** and "
    "**Embed Links** permissions in this channel.",
    "delivery_error": "I couldn't post the result in this channel. Try again later.",
    "shutdown": "The bot is restarting, so your upscale was stopped. Please try again shortly.",
    "restart": "The bot restarted while your upscale was in progress. Please try again.",
}
GENERIC_JOB_FAILURE = "The upscale failed. Try again later."


@dataclass(frozen=True, slots=True)
class SourceImage:
    """Where the input comes from: a Discord-hosted URL and its declared facts."""

    url: str
    filename: str
    declared_size: int | None


def failure_message(failure: JobFailure) -> str:
    """The user's message for a failed job (always mentions the refund)."""
    text = FAILURE_TEXT.get(failure.kind, GENERIC_JOB_FAILURE)
    if failure.kind == "rate_limited":
        wait = max(5, int(failure.retry_after or 30))
        retry_at = int(time.time()) + wait
        text += f" Try again <t:{retry_at}:R>."
    return f"{text} {REFUNDED}"


def too_large_message(max_bytes: int) -> str:
    return f"That file is too large: the upscaler takes images up to {max_bytes // 1_000_000} MB."


def limit_message(error: LimitReached) -> str:
    denial = error.denial
    who = "this server's upscale budget" if denial.reason == "server_budget" else "your limit"
    text = f"You've reached {who} ({denial.used}/{denial.limit} credits used this period)."
    if denial.resets_at is not None:
        text += f" It resets <t:{int(denial.resets_at.timestamp())}:R>."
    return text


def human_bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} B"


class DeleteResultButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"upscale:delete:(?P<owner>[0-9]{1,20})",
):
    """Deletes a delivered result; only its requester or a moderator may press it."""

    def __init__(self, owner_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete",
                style=discord.ButtonStyle.secondary,
                emoji="🗑️",
                custom_id=f"upscale:delete:{owner_id}",
            )
        )
        self.owner_id = owner_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: Any,
        /,
    ) -> DeleteResultButton:
        return cls(int(match["owner"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        roles: Collection[int] = interaction.client.settings.moderator_role_ids  # type: ignore[attr-defined]
        allowed = interaction.user.id == self.owner_id or is_moderator(interaction.user, roles)
        if not allowed:
            await interaction.response.send_message(
                "Only the member who asked for this upscale, or a moderator, can delete it.",
                ephemeral=True,
            )
            return
        await interaction.response.defer()
        if interaction.message is not None:
            await interaction.message.delete()


class ProgressDisplay:
    """Shows a job's place in line and stage on the deferred reply, throttled.

    The first edit waits ``FIRST_PROGRESS_DELAY``: Discord already shows "thinking…",
    and most jobs that start at once finish before a progress line would help; skipping
    those edits keeps REST traffic (and event-loop work) down during bursts.
    """

    def __init__(self, interaction: discord.Interaction, interval: float = PROGRESS_INTERVAL):
        self._interaction = interaction
        self._interval = interval
        self._latest: str | None = None
        self._shown: str | None = None
        # Pretend an edit happened so the first real one comes FIRST_PROGRESS_DELAY from now.
        self._last_edit = time.monotonic() - interval + FIRST_PROGRESS_DELAY
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def show(self, text: str) -> None:
        if self._closed:
            return
        self._latest = text
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._pump(), name="upscale-progress")

    async def _pump(self) -> None:
        while not self._closed and self._latest != self._shown:
            wait = self._last_edit + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            text = self._latest
            if token_expired(self._interaction):
                self._closed = True
                return
            try:
                await self._interaction.edit_original_response(content=text)
            except discord.HTTPException as exc:
                log.info("Progress edit failed (%s); no more progress for this job", exc.status)
                self._closed = True
                return
            self._shown = text
            self._last_edit = time.monotonic()

    async def close(self) -> None:
        """Stop editing (before the final edit); waits for an edit in flight."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class InteractionJobObserver:
    """Adapts one job's queue callbacks to its interaction."""

    def __init__(self, cog: Upscale, interaction: discord.Interaction, started: float) -> None:
        self.cog = cog
        self.interaction = interaction
        self.started_unix = int(started)
        self.display = ProgressDisplay(interaction)

    def progress(self, job: Job, stage: Stage, position: int | None) -> None:
        since = f"<t:{self.started_unix}:R>"
        if stage is Stage.QUEUED:
            place = f"#{position}" if position else "next"
            text = f"⏳ Queued: you're {place} in line (requested {since})."
        else:
            text = f"⚙️ {STAGE_TEXT.get(stage, stage.value)}… (requested {since})"
        if job.prepared.notes:
            text += "\n" + "\n".join(f"ℹ️ {note}" for note in job.prepared.notes)
        self.display.show(text)

    async def deliver(self, job: Job, result: JobResult) -> int | None:
        await self.display.close()
        return await self.cog.deliver(self.interaction, job, result)

    async def failed(self, job: Job, failure: JobFailure) -> None:
        await self.display.close()
        await self.cog.send(
            self.interaction, f"❌ {failure_message(failure)}", job.request.member_id
        )


class Upscale(commands.Cog):
    """The upscale commands."""

    def __init__(self, bot: UpscaleBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Upscale image", callback=self.upscale_message)
        self.menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)
        self.bot.add_dynamic_items(DeleteResultButton)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)
        self.bot.remove_dynamic_items(DeleteResultButton)

    # -- commands ----------------------------------------------------------------------

    @app_commands.command(name="upscale", description="Upscale an image 4× with AI")
    @app_commands.describe(image="The image to upscale", format="Output format (default PNG)")
    @app_commands.choices(format=FORMAT_CHOICES)
    @app_commands.guild_only()
    async def upscale(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        format: app_commands.Choice[str] | None = None,
    ) -> None:
        await interaction.response.defer(thinking=True)
        source = SourceImage(image.url, image.filename, image.size)
        await self.start_job(interaction, source, format.value if format else "png")

    async def upscale_message(
        self, interaction: discord.Interaction, message: discord.Message
    ) -> None:
        await interaction.response.defer(thinking=True)
        source = self.source_from_message(message)
        await self.start_job(interaction, source, "png")

    def source_from_message(self, message: discord.Message) -> SourceImage:
        """The first image attachment, else the first image embed hosted by Discord."""
        for attachment in message.attachments:
            if attachment.content_type is None or attachment.content_type.startswith("image/"):
                return SourceImage(attachment.url, attachment.filename, attachment.size)
        for embed in message.embeds:
            for media in (embed.image, embed.thumbnail):
                for url in (media.proxy_url, media.url):
                    if url and self.allowed_source(url):
                        name = Path(urlsplit(url).path).name or "image.png"
                        return SourceImage(url, name, None)
        raise UserError("That message has no image attached or embedded from Discord.")

    # -- the job -----------------------------------------------------------------------

    def allowed_source(self, url: str) -> bool:
        """True when ``url`` is on one of the bot's media origins (Discord's CDN)."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        return origin in self.bot.media_origins

    async def start_job(
        self, interaction: discord.Interaction, source: SourceImage, output_format: str
    ) -> None:
        started = time.time()
        guild = interaction.guild
        if guild is None:
            raise UserError(NOT_IN_DMS)
        perms = interaction.app_permissions
        if not (perms.attach_files and perms.embed_links):
            raise UserError(FAILURE_TEXT["missing_permissions"])
        limits = self.bot.queue.limits
        if source.declared_size is not None and source.declared_size > limits.max_bytes:
            raise UserError(too_large_message(limits.max_bytes))
        if not self.allowed_source(source.url):
            raise UserError("I can only upscale images hosted on Discord.")
        member = interaction.user
        role_ids = [r.id for r in getattr(member, "roles", ())]
        queue = self.bot.queue
        try:
            ticket = queue.admit(guild.id, member.id)
        except QueueFull as exc:
            jobs = "upscale" if exc.limit == 1 else "upscales"
            raise UserError(
                f"You already have {exc.limit} {jobs} queued or running. "
                "Wait for one to finish, then try again."
            ) from None
        except QueueClosed:
            raise UserError(FAILURE_TEXT["shutdown"]) from None
        with ticket:
            path = queue.spool_path(ticket)
            await self.download_to(source.url, path, limits.max_bytes)
            try:
                prepared = await queue.prepare(ticket, path, source.filename)
            except images.ImageRejected as exc:
                raise UserError(exc.message) from None
            request = JobRequest(
                guild_id=guild.id,
                channel_id=interaction.channel_id or 0,
                member_id=member.id,
                role_ids=role_ids,
                output_format=output_format,
            )
            observer = InteractionJobObserver(self, interaction, started)
            try:
                job = await queue.submit(ticket, request, prepared, observer, context=interaction)
            except LimitReached as exc:
                raise UserError(limit_message(exc)) from None
            except QueueClosed:
                raise UserError(FAILURE_TEXT["shutdown"]) from None
        observer.progress(job, Stage.QUEUED, queue.position(job))

    async def download_to(self, url: str, path: Path, max_bytes: int) -> None:
        """Stream ``url`` into ``path``, refusing more than ``max_bytes``."""
        too_large = UserError(too_large_message(max_bytes))
        try:
            async with self.bot.session.get(
                url, timeout=DOWNLOAD_TIMEOUT, allow_redirects=False
            ) as response:
                if response.status != 200:
                    log.info("Attachment download answered HTTP %d", response.status)
                    raise UserError(
                        "I couldn't download that image from Discord. Please try again."
                    )
                if (response.content_length or 0) > max_bytes:
                    raise too_large
                await _stream_to_file(response, path, max_bytes, too_large)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("Attachment download failed: %s", type(exc).__name__)
            raise UserError(
                "I couldn't download that image from Discord. Please try again."
            ) from None

    # -- delivery ----------------------------------------------------------------------

    async def deliver(
        self, interaction: discord.Interaction, job: Job, result: JobResult
    ) -> int | None:
        """Post the result, fitted under the interaction's upload limit."""
        limit = max(1024 * 1024, interaction.filesize_limit - UPLOAD_MARGIN)
        stem = Path(job.prepared.filename).stem[:60] or "image"
        fitted = await self.bot.services.image_workers.fit(
            result.data, result.format, limit, f"{stem}_4x"
        )
        balance = await self.bot.ledger.balance(
            job.request.guild_id, job.request.member_id, job.request.role_ids
        )
        embed = self.result_embed(job, result, fitted, balance.remaining)
        view = discord.ui.View(timeout=None)
        view.add_item(DeleteResultButton(job.request.member_id))
        if fitted.reencoded or fitted.resized:
            view.add_item(discord.ui.Button(label="Full-size original", url=result.temporary_url))
        file = discord.File(io.BytesIO(fitted.data), filename=fitted.filename)
        embed.set_image(url=f"attachment://{fitted.filename}")
        mention = f"<@{job.request.member_id}>"
        try:
            if not token_expired(interaction):
                try:
                    message = await interaction.edit_original_response(
                        content=mention, embed=embed, attachments=[file], view=view
                    )
                    return message.id
                except discord.HTTPException as exc:
                    if exc.code not in (50027, 10015):  # invalid webhook token / unknown webhook
                        raise
                    file.reset()
            channel = interaction.channel
            if not isinstance(channel, discord.abc.Messageable):
                raise DeliveryFailed("delivery_error", "no channel to post in")
            message = await channel.send(
                f"{mention}, your upscale is ready.",
                embed=embed,
                file=file,
                view=view,
                allowed_mentions=discord.AllowedMentions(users=True),
            )
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            return message.id
        except discord.Forbidden as exc:
            raise DeliveryFailed("missing_permissions", str(exc.code)) from exc
        except discord.HTTPException as exc:
            raise DeliveryFailed("delivery_error", f"HTTP {exc.status} code {exc.code}") from exc

    def result_embed(
        self, job: Job, result: JobResult, fitted: images.FittedImage, remaining: int | None
    ) -> discord.Embed:
        ow, oh = job.prepared.original_size
        nw, nh = fitted.size
        embed = discord.Embed(title="Upscaled 4×", colour=discord.Colour.green())
        embed.add_field(name="Size", value=f"{ow}×{oh} → {nw}×{nh}")
        embed.add_field(name="Format", value=fitted.format.upper())
        embed.add_field(name="File size", value=human_bytes(len(fitted.data)))
        embed.add_field(name="Time", value=f"{result.elapsed:.1f} s")
        if remaining is not None:
            embed.add_field(name="Credits left", value=str(remaining))
        notes = list(job.prepared.notes)
        if fitted.note:
            notes.append(fitted.note)
        if notes:
            embed.description = "\n".join(f"ℹ️ {note}" for note in notes)
        embed.set_footer(text=f"Job {job.id[:8]}")
        return embed

    async def send(self, interaction: discord.Interaction, text: str, member_id: int) -> None:
        """Edit the deferred reply, or post in the channel once the token has expired."""
        try:
            if not token_expired(interaction):
                await interaction.edit_original_response(content=text, embed=None, view=None)
                return
        except discord.HTTPException as exc:
            if exc.code not in (50027, 10015):
                log.warning("Could not edit the reply: HTTP %d", exc.status)
                return
        channel = interaction.channel
        if isinstance(channel, discord.abc.Messageable):
            with contextlib.suppress(discord.HTTPException):
                await channel.send(
                    f"<@{member_id}> {text}",
                    allowed_mentions=discord.AllowedMentions(users=True),
                )


async def _stream_to_file(
    response: aiohttp.ClientResponse, path: Path, max_bytes: int, too_large: Exception
) -> None:
    received = 0
    buffer = bytearray()
    fh = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
            received += len(chunk)
            if received > max_bytes:
                raise too_large
            buffer += chunk
            if len(buffer) >= WRITE_BATCH:
                await asyncio.to_thread(fh.write, bytes(buffer))
                buffer.clear()
        if buffer:
            await asyncio.to_thread(fh.write, bytes(buffer))
    finally:
        await asyncio.to_thread(fh.close)


async def setup(bot: UpscaleBot) -> None:
    await bot.add_cog(Upscale(bot))
