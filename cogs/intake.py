"""Taking an image in from a command: what ``/upscale`` and **Upscale image** share.

Both commands acknowledge first, inside :func:`acknowledged` (the interaction is
journaled before the acknowledgement and marked done once the command has finished:
:mod:`bot.frontend.journal`, so that a restart in between still answers the member),
then call :func:`start_job` for each image, with a job id chosen before the
acknowledgement. It checks what it can without spending anything (guild, the bot's permissions,
the 1min.ai circuit, the declared size, the image's origin), has the queue record the
job and reserve its credits (:meth:`bot.jobs.JobQueue.accept`: from here on a restart
cannot lose it), then has the queue fetch and check the image
(:meth:`bot.jobs.JobQueue.take_in`). A refusal raises :class:`bot.frontend.tree.UserError` with
the member's words; a refused image costs nothing (its reservation is refunded in the
transaction that records the refusal).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bot.frontend.journal import Acknowledged, journal_of
from bot.frontend.replies import ReplyTarget
from bot.frontend.tree import UserError, answer_error
from bot.jobs import (
    InputRefused,
    JobRequest,
    LimitReached,
    QueueClosed,
    QueueFull,
    Source,
)
from bot.jobs.intake import too_large_text
from cogs import messages
from cogs.checks import NOT_IN_DMS

if TYPE_CHECKING:
    from bot.frontend.client import Interaction, UpscaleBot


@dataclass(frozen=True, slots=True)
class SourceImage:
    """Where the input comes from: a Discord-hosted URL and its declared facts."""

    url: str
    filename: str
    declared_size: int | None


async def defer(interaction: Interaction) -> int | None:
    """Acknowledge at once; returns the deferred reply's message id when Discord gives it."""
    response = await interaction.response.defer(thinking=True)
    return response.message_id if response is not None else None


@asynccontextmanager
async def acknowledged(
    interaction: Interaction, job_ids: Sequence[str]
) -> AsyncIterator[int | None]:
    """Journal the interaction with ``job_ids``, acknowledge it, and give the deferred
    reply's message id to the block, which records the jobs and answers the member.

    An error out of the block is answered here, as the tree's handler answers any
    command's (:func:`bot.frontend.tree.answer_error`), and not raised further; the
    interaction is then done in the journal, whether the block ended or raised. A block
    cancelled (the process stopping) is not done: the next start answers its member if
    no job of it was recorded (:func:`bot.frontend.journal.answer_unrecorded`).
    """
    journal = journal_of(interaction.client)
    journal.acknowledged(Acknowledged.of(interaction, job_ids))
    try:
        message_id = await defer(interaction)
    except Exception:  # not acknowledged: the member never saw "thinking"
        journal.done(interaction.id)
        raise
    if message_id is not None:
        journal.deferred(interaction.id, message_id)
    try:
        yield message_id
    except Exception as exc:
        command = interaction.command.qualified_name if interaction.command else "?"
        await answer_error(interaction, exc, f"Command {command}")
    journal.done(interaction.id)


def allowed_source(bot: UpscaleBot, url: str) -> bool:
    """True when ``url`` is on one of the bot's media origins (Discord's CDN)."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    return origin in bot.media_origins


async def start_job(
    interaction: Interaction,
    message_id: int | None,
    source: SourceImage,
    output_format: str,
    *,
    job_id: str,
    source_link: str | None = None,
) -> None:
    """Check, record (as ``job_id``), take in and queue one image; its answers go to
    ``message_id``.

    ``source_link`` (the message the image came from) becomes the result's Source link.
    Raises :class:`UserError` with the member's message when the image is refused.
    """
    bot = interaction.client
    guild = interaction.guild
    if guild is None:
        raise UserError(NOT_IN_DMS)
    perms = interaction.app_permissions
    if not (perms.attach_files and perms.embed_links):
        raise UserError(messages.MISSING_PERMISSIONS)
    queue = bot.queue
    if (await bot.circuit.state()).open:
        raise UserError(messages.CIRCUIT_OPEN_REFUSAL)
    limits = queue.config.limits
    if source.declared_size is not None and source.declared_size > limits.max_bytes:
        raise UserError(too_large_text(limits.max_bytes))
    if not allowed_source(bot, source.url):
        raise UserError(messages.NOT_ON_DISCORD)
    member = interaction.user
    role_ids = tuple(r.id for r in getattr(member, "roles", ()))
    target = ReplyTarget.from_interaction(interaction, message_id)
    request = JobRequest(
        guild_id=guild.id,
        channel_id=interaction.channel_id or 0,
        member_id=member.id,
        role_ids=role_ids,
        source=Source(source.url, source.filename, source.declared_size),
        context=target.job_context(
            upload_limit=interaction.filesize_limit, source_link=source_link
        ),
        reply_token=interaction.token,
        output_format=output_format,
        id=job_id,
    )
    try:
        job = await queue.accept(request)
    except QueueFull as exc:
        raise UserError(messages.queue_full_text(exc.limit)) from None
    except LimitReached as exc:
        raise UserError(messages.limit_text(exc)) from None
    except QueueClosed:
        raise UserError(messages.SHUTDOWN) from None
    try:
        await queue.take_in(job)  # its place in line is shown from here on
    except InputRefused as exc:
        raise UserError(exc.text) from None
