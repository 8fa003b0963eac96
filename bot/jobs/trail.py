"""A job's trail: what happened to it, when, and in which process.

The job id shown in a result's footer (its first eight characters, or the whole id)
finds the job; its trail (one line per stage change, written by the statement that made
the change, see :mod:`bot.jobs.store`), its outcome and its credits answer a member's
"where is my upscale?". The owner reads it with ``upscale-bot job <id>`` (this module
prints it, in English); moderators with ``/usage job:<id>`` (rendered in their language
by the credits cog, for jobs of their own server only).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from bot.app.settings import Settings
from bot.db import open_database, parse_ts
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
    rows = await store.find(shown_id)
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


async def show_job(settings: Settings, shown_id: str, out: TextIO) -> int:
    """``upscale-bot job <id>``: print the job's trail; 1 when there is no such job."""
    async with await open_database(settings.database_url.get()) as db:
        ledger = Ledger(
            db, default_limit=settings.default_user_limit, default_period=settings.limit_period
        )
        trail = await find_trail(JobStore(db, owner="cli"), ledger, shown_id)
    if trail is None:
        print(f"No job with id {shown_id!r} (or more than one starts so).", file=out)
        return 1
    print_trail(trail, out)
    return 0


def when(at: float) -> str:
    """A trail time as the owner reads it: UTC, to the millisecond."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def print_trail(trail: JobTrail, out: TextIO) -> None:
    """The trail for the owner's terminal (``upscale-bot job <id>``)."""
    job = trail.job
    print(f"Job {job.id}", file=out)
    print(
        f"  server {job.guild_id}, channel {job.channel_id}, member {job.member_id};"
        f" {job.output_format.upper()} from {job.source.filename}",
        file=out,
    )
    outcome = trail.status.value
    if trail.error_kind and trail.status is not JobStatus.DELIVERED:
        outcome += f" ({trail.error_kind})"
    if trail.message_id:
        outcome += f", message {trail.message_id}"
    if trail.output_size:
        outcome += f", {trail.output_size[0]}x{trail.output_size[1]}"
    print(f"  outcome: {outcome}", file=out)
    if trail.credits is not None:
        cost, state = trail.credits
        print(f"  credits: {cost} {state}", file=out)
    print(f"  1min.ai record: {job.record_id or '-'}", file=out)
    print("  stages:", file=out)
    width = max((len(e.stage) for e in trail.events), default=0)
    for event in trail.events:
        detail = f"  ({event.detail})" if event.detail else ""
        print(f"    {when(event.at)}  {event.stage:<{width}}  {event.process}{detail}", file=out)
