"""What the job queue deals in: jobs and their stages, requests, results and failures, the
errors a front end sees, and the :class:`FrontEnd` protocol it implements.

Plain data and no I/O; :mod:`bot.jobs` runs the queue.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from bot import compare, images
from bot.db import Row, parse_ts
from bot.failures import FailureKind
from bot.ledger import Denial
from bot.onemin import OneMinError, RateLimited


class Stage(StrEnum):
    """Where a job is; shown to the user. Persisted except ``WAITING``."""

    QUEUED = "queued"
    WAITING = "waiting"  # waiting for 1min.ai's rate window (display only)
    UPLOADING = "uploading"
    UPSCALING = "upscaling"
    DOWNLOADING = "downloading"
    DELIVERING = "delivering"
    DONE = "done"


# Stages in which a job may still be cancelled: nothing has been sent to the upscaler.
CANCELLABLE_STAGES = (Stage.QUEUED, Stage.UPLOADING)


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    TOO_LATE = "too_late"  # already sent to the upscaler
    FINISHED = "finished"  # delivered, failed or cancelled before
    NOT_ALLOWED = "not_allowed"  # neither the requester nor a moderator
    NOT_FOUND = "not_found"


class QueueFull(Exception):
    """The member already has their maximum number of jobs queued or running."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"member has {limit} jobs queued or running")
        self.limit = limit


class LimitReached(Exception):
    """The ledger refused the reservation."""

    def __init__(self, denial: Denial) -> None:
        super().__init__(denial.reason)
        self.denial = denial


class QueueClosed(Exception):
    """The queue is shutting down and takes no new jobs."""


class DeliveryFailed(Exception):
    """The front end could not deliver the result; ``kind`` says why."""

    def __init__(self, kind: FailureKind, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind


class BadResult(Exception):
    """1min.ai returned something that is not a proper upscale of the input."""

    kind = FailureKind.BAD_RESULT


class InputLost(Exception):
    """The job's prepared input is no longer stored (e.g. left by an older version)."""

    kind = FailureKind.INPUT_LOST


class Stopped(Exception):
    """This process no longer owns the job (cancelled, or its lease was taken over)."""


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What the front end knows about the request.

    ``context`` is the front end's own (JSON-serialisable) data, stored with the job and
    handed back with it in any process: e.g. how to answer the member.
    """

    guild_id: int
    channel_id: int
    member_id: int
    role_ids: Collection[int]
    output_format: str = "png"
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PreparedInfo:
    """What validation found, without the bytes."""

    filename: str
    format: str
    original_size: tuple[int, int]
    size: tuple[int, int]
    source_format: str
    notes: tuple[images.Note, ...]  # ``note.*`` texts, rendered for the member
    input_bytes: int


@dataclass(slots=True)
class Job:
    """One accepted upscale, as recorded; any process can rebuild it from its row."""

    id: str
    guild_id: int
    channel_id: int
    member_id: int
    output_format: str
    prepared: PreparedInfo
    reservation_id: str
    created_at: float  # Unix seconds
    context: dict[str, Any]
    stage: Stage = Stage.QUEUED
    asset_path: str | None = None
    result_url: str | None = None
    claims: int = 0  # how many times a process took it on (> 1: resumed)
    resumed_from: Stage | None = None  # the stage recorded when this process claimed it

    @property
    def elapsed(self) -> float:
        return max(0.0, time.time() - self.created_at)

    @property
    def resumed(self) -> bool:
        return self.claims > 1

    @classmethod
    def from_row(cls, row: Row) -> Job:
        notes = tuple(images.Note.from_json(n) for n in json.loads(row["notes"] or "[]"))
        prepared = PreparedInfo(
            filename=row["source_name"],
            format=row["input_format"] or "png",
            original_size=(
                int(row["original_width"] or row["input_width"] or 0),
                int(row["original_height"] or row["input_height"] or 0),
            ),
            size=(int(row["input_width"] or 0), int(row["input_height"] or 0)),
            source_format=row["source_format"] or "",
            notes=notes,
            input_bytes=int(row["input_bytes"] or 0),
        )
        return cls(
            id=row["id"],
            guild_id=int(row["guild_id"]),
            channel_id=int(row["channel_id"]),
            member_id=int(row["member_id"]),
            output_format=row["output_format"],
            prepared=prepared,
            reservation_id=row["reservation_id"] or "",
            created_at=parse_ts(row["created_at"]).timestamp(),
            context=json.loads(row["context"] or "{}"),
            stage=stage_of(row["stage"]),
            asset_path=row["asset_path"],
            result_url=row["result_url"],
            claims=int(row["claims"] or 0),
        )


@dataclass(frozen=True, slots=True)
class JobResult:
    """The upscaled image handed to the front end for delivery.

    The image stays in a file: ``path``, in the queue's spool (``byte_count`` bytes, up to
    :data:`bot.jobs.RESULT_MAX_BYTES`). Open it from there (e.g.
    :meth:`bot.workers.ImageWorkers.fit`) rather than reading it whole; the queue removes
    it when the job ends, so the front end is done with it when ``deliver`` returns.
    """

    path: Path
    byte_count: int
    format: str
    size: tuple[int, int]
    temporary_url: str
    elapsed: float
    crops: compare.CompareCrops | None = None  # for the Compare button, when they could be made


@dataclass(frozen=True, slots=True)
class JobFailure:
    """Why a job failed, for the user's message."""

    kind: FailureKind
    retry_after: float | None = None
    detail: str = ""


class FrontEnd(Protocol):
    """Implemented once by the front end; called for every job, in any process."""

    def progress(self, job: Job, stage: Stage, position: int | None) -> None:
        """The job moved (``position``: its 1-based place in line while it waits).

        Called synchronously from the queue: schedule any slow work, never block.
        """

    async def deliver(self, job: Job, result: JobResult) -> int | None:
        """Post the result; return the message id. Raise :class:`DeliveryFailed` on failure."""

    async def find_delivered(self, job: Job) -> int | None:
        """The id of the job's result message if it was already posted, else None."""

    async def failed(self, job: Job, failure: JobFailure) -> None:
        """Tell the member the job failed (its credits have been refunded)."""

    async def resumed(self, job: Job) -> None:
        """Tell the member their job continues after a restart or a takeover."""

    async def paused(self, job: Job) -> None:
        """Tell the member the bot is stopping; the job continues when it is back."""

    async def ended(self, job_id: str) -> None:
        """The job ended outside the queue's run (cancelled): stop showing its progress."""


def failure_for(exc: BaseException) -> JobFailure:
    """The failure to record for an exception a job raised."""
    if isinstance(exc, RateLimited):
        return JobFailure(exc.kind, retry_after=exc.retry_after, detail=str(exc))
    if isinstance(exc, OneMinError | DeliveryFailed | BadResult | InputLost):
        return JobFailure(exc.kind, detail=str(exc))
    return JobFailure(FailureKind.BUG, detail=type(exc).__name__)


def stage_of(value: str) -> Stage:
    try:
        return Stage(value)
    except ValueError:
        return Stage.QUEUED
