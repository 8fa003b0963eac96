"""A job's trail: what happened to it, when, and in which process.

The job id shown in a result's footer (its first eight characters, or the whole id)
finds the job; its trail (one line per stage change, written by the statement that made
the change, see :mod:`bot.jobs.store`), its outcome and its credits answer a member's
"where is my upscale?". The owner reads it with ``upscale-bot job <id>``
(:mod:`bot.app.trail` prints it as :func:`format_trail` writes it, in English);
moderators with ``/usage job:<id>`` (rendered in their language by the credits cog, for
jobs of their own server only).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from bot.db import parse_ts
from bot.jobs.model import Job, JobStatus
from bot.jobs.store import JobStore, TrailEvent, parse_trail
from bot.ledger import Ledger


@dataclass(frozen=True, slots=True)
class JobTrail:
    """Everything recorded about one job."""

    job: Job
    events: list[TrailEvent]
    status: JobStatus
    error_kind: str | None
    finished_at: datetime | None
    message_id: int | None
    output_size: tuple[int, int] | None
    output_bytes: int | None
    credits: tuple[int, str] | None  # (cost, reserved | committed | refunded)


async def find_trail(store: JobStore, ledger: Ledger, shown_id: str) -> JobTrail | None:
    """The trail of the one job whose id starts with ``shown_id``, or None."""
    rows = await store.views.find_by_shown_id(shown_id)
    if len(rows) != 1:
        return None
    row = rows[0]
    job = Job.from_row(row)
    width, height = row["output_width"], row["output_height"]
    return JobTrail(
        job=job,
        events=parse_trail(row["trail"]),
        status=JobStatus(row["status"]),
        error_kind=row["error_kind"],
        finished_at=parse_ts(row["finished_at"]) if row["finished_at"] else None,
        message_id=int(row["message_id"]) if row["message_id"] else None,
        output_size=(int(width), int(height)) if width and height else None,
        output_bytes=int(row["output_bytes"]) if row["output_bytes"] else None,
        credits=await ledger.reservation(job.reservation_id) if job.reservation_id else None,
    )


def when(at: float) -> str:
    """A trail time as the owner reads it: UTC, to the millisecond."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_trail(trail: JobTrail) -> str:
    """The trail for the owner's terminal (``upscale-bot job <id>``), one line a fact."""
    job = trail.job
    lines = [
        f"Job {job.id}",
        f"  server {job.guild_id}, channel {job.channel_id}, member {job.member_id};"
        f" {job.output_format.upper()} from {job.source.filename}",
    ]
    outcome = trail.status.value
    if trail.error_kind and trail.status is not JobStatus.DELIVERED:
        outcome += f" ({trail.error_kind})"
    if trail.message_id:
        outcome += f", message {trail.message_id}"
    if trail.output_size:
        outcome += f", {trail.output_size[0]}x{trail.output_size[1]}"
    lines.append(f"  outcome: {outcome}")
    if trail.credits is not None:
        cost, state = trail.credits
        lines.append(f"  credits: {cost} {state}")
    lines.append(f"  1min.ai record: {job.record_id or '-'}")
    lines.append("  stages:")
    width = max((len(e.stage) for e in trail.events), default=0)
    for event in trail.events:
        detail = f"  ({event.detail})" if event.detail else ""
        lines.append(f"    {when(event.at)}  {event.stage:<{width}}  {event.process}{detail}")
    return "\n".join(lines)
