"""What the job queue deals in: jobs, their status and stages, requests, results and
failures, the errors a front end sees, and the :class:`FrontEnd` protocol it implements.

Plain data and no I/O; the rest of :mod:`bot.jobs` runs the queue. What the front end
keeps with a job to answer its member (``Job.context``) is a string the queue stores and
never reads; the member's roles, which the ledger needs, are a field of their own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from bot import images
from bot.db import Row, parse_ts
from bot.failures import FailureKind
from bot.i18n import Text
from bot.images import compare
from bot.ledger import Denial
from bot.onemin.client import OneMinError, RateLimited


class JobStatus(StrEnum):
    """Where a job is in its life, as stored in ``jobs.status``."""

    INTAKE = "intake"  # recorded and reserved; its image is being fetched and checked
    QUEUED = "queued"  # its input is stored; it waits for a process to claim it
    RUNNING = "running"  # a process holds it under a lease
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in UNFINISHED


UNFINISHED = (JobStatus.INTAKE, JobStatus.QUEUED, JobStatus.RUNNING)


class Stage(StrEnum):
    """Where a job is; shown to the user. Persisted except ``WAITING``."""

    RECEIVING = "receiving"  # its image is being fetched and checked (status intake)
    QUEUED = "queued"
    WAITING = "waiting"  # waiting for 1min.ai's rate window or an upscale slot (display only)
    UPLOADING = "uploading"
    UPSCALING = "upscaling"
    DOWNLOADING = "downloading"
    DELIVERING = "delivering"
    DONE = "done"


# Stages in which a job may still be cancelled: nothing has been sent to the upscaler.
CANCELLABLE_STAGES = (Stage.RECEIVING, Stage.QUEUED, Stage.UPLOADING)
# Stages that hold one of the fleet's ``MAX_CONCURRENT_JOBS`` upscale slots.
SLOT_STAGES = (Stage.UPLOADING, Stage.UPSCALING)


class WaitReason(StrEnum):
    """Why a job that could otherwise run is waiting (shown to the member)."""

    RATE_LIMIT = "rate_limit"  # 1min.ai's requests per minute (the bot paces itself)
    SERVICE_REFUSING = "service_refusing"  # 1min.ai refuses the account (the circuit)


@dataclass(frozen=True, slots=True)
class Progress:
    """What a front end shows about a job that is not finished.

    ``position`` is the 1-based place in a line (the queue, or the rate window's line);
    ``wait`` says why the job waits when it is not only its place in the queue, and
    ``until`` (Unix seconds) when that wait ends at the latest (e.g. when the job will be
    refunded if 1min.ai keeps refusing the account).
    """

    stage: Stage
    position: int | None = None
    wait: WaitReason | None = None
    until: float | None = None


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    TOO_LATE = "too_late"  # already sent to the upscaler
    FINISHED = "finished"  # delivered, failed or cancelled before
    NOT_ALLOWED = "not_allowed"  # neither the requester nor a moderator
    NOT_FOUND = "not_found"


class QueueFull(Exception):
    """The member already has their maximum number of jobs unfinished."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"member has {limit} jobs unfinished")
        self.limit = limit


class LimitReached(Exception):
    """The ledger refused the reservation."""

    def __init__(self, denial: Denial) -> None:
        super().__init__(denial.reason)
        self.denial = denial


class QueueClosed(Exception):
    """The queue is shutting down and takes no new jobs."""


class InputRefused(Exception):
    """The member's image could not be taken in; the job is failed and refunded.

    ``text`` says why, for the member; ``kind`` is what the job's row records.
    """

    def __init__(self, kind: FailureKind, text: Text) -> None:
        super().__init__(f"{kind}: {text.key}")
        self.kind = kind
        self.text = text


class JobFailed(Exception):
    """The job cannot go on; ``kind`` says why (e.g. 1min.ai returned something that is
    not a proper upscale of the input, or the job's input is no longer stored)."""

    def __init__(self, kind: FailureKind, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind


class DeliveryFailed(JobFailed):
    """The front end could not deliver the result; ``kind`` says why."""


class Stopped(Exception):
    """This process no longer owns the job (cancelled, or its lease was taken over)."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where a job's image comes from: a URL the front end checked, and what it declared."""

    url: str
    filename: str
    declared_size: int | None = None


def new_job_id() -> str:
    """A new job's id: 32 hex digits, unique without asking the database."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What the front end knows about a request when it accepts it."""

    guild_id: int
    channel_id: int
    member_id: int
    role_ids: Collection[int]  # the member's roles when they asked (role limits)
    source: Source
    # What the front end keeps with the job to answer its member later, from any process
    # (where the reply is, the member's language...): opaque to the queue, which stores it
    # as given and hands it back with the job.
    context: str
    reply_token: str | None = None  # the interaction token (erased when the job ends)
    output_format: str = "png"
    id: str | None = None  # the job's id when the front end chose it (:func:`new_job_id`)


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

    @classmethod
    def of(cls, prepared: images.PreparedImage) -> PreparedInfo:
        """What validation found in ``prepared``: its own fields, and its byte count."""
        own = {f.name: getattr(prepared, f.name) for f in fields(cls) if f.name != "input_bytes"}
        return cls(**own, input_bytes=len(prepared.data))


@dataclass(slots=True)
class Job:
    """One accepted upscale, as recorded; any process can rebuild it from its row."""

    id: str
    guild_id: int
    channel_id: int
    member_id: int
    output_format: str
    source: Source
    context: str  # the front end's, opaque here (see JobRequest)
    reservation_id: str
    created_at: float  # Unix seconds
    role_ids: tuple[int, ...] = ()  # the member's roles when they asked (role limits)
    status: JobStatus = JobStatus.INTAKE
    stage: Stage = Stage.RECEIVING
    reply_token: str | None = None
    prepared: PreparedInfo | None = None  # None until its image has been taken in
    asset_path: str | None = None
    result_url: str | None = None
    record_id: str | None = None  # 1min.ai's aiRecord uuid of the upscale
    claims: int = 0  # how many times a process took it on: the claim that holds it (fencing)
    lease_until: float = 0.0  # the lease end its claim wrote (Unix seconds; not stored as such)
    resumed: bool = False  # this run continues one a restart or a dead process cut off
    resumed_from: Stage | None = None  # the stage recorded when this process claimed it

    @property
    def elapsed(self) -> float:
        return max(0.0, time.time() - self.created_at)

    @property
    def input(self) -> PreparedInfo:
        """The prepared input's facts (only once the image has been taken in)."""
        if self.prepared is None:
            raise JobFailed(FailureKind.INPUT_LOST, "the job's image has not been taken in")
        return self.prepared

    @classmethod
    def requested(cls, request: JobRequest, created_at: float) -> Job:
        """A new job for what ``request`` says (every field of the request is one of the
        job's), under the request's id or a new one; its reservation is made with it."""
        asked = {f.name: getattr(request, f.name) for f in fields(request) if f.name != "id"}
        asked["role_ids"] = tuple(request.role_ids)
        job_id = request.id or new_job_id()
        return cls(id=job_id, reservation_id="", created_at=created_at, **asked)

    def stored_context(self) -> str:
        """What ``jobs.context`` holds: the member's roles and the front end's context."""
        return json.dumps({"roles": list(self.role_ids), "front": self.context})

    @classmethod
    def from_row(cls, row: Row) -> Job:
        stored = _StoredContext.read(row["context"])
        return cls(
            id=row["id"],
            guild_id=int(row["guild_id"]),
            channel_id=int(row["channel_id"]),
            member_id=int(row["member_id"]),
            output_format=row["output_format"],
            source=Source(
                row["source_url"] or "",
                images.clean_filename(row["source_name"]),  # raw in older versions' rows
                row["source_size"],
            ),
            context=stored.front,
            reservation_id=row["reservation_id"] or "",
            created_at=parse_ts(row["created_at"]).timestamp(),
            role_ids=stored.role_ids,
            status=JobStatus(row["status"]),
            stage=stage_of(row["stage"]),
            reply_token=row["reply_token"] or stored.legacy_token,
            prepared=_prepared_of(row),
            asset_path=row["asset_path"],
            result_url=row["result_url"],
            record_id=row["record_id"],
            claims=int(row["claims"] or 0),
        )


@dataclass(frozen=True, slots=True)
class _StoredContext:
    """``jobs.context`` read back: the front end's context, the member's roles, and the
    interaction token of a row written before the token had its own column."""

    front: str
    role_ids: tuple[int, ...]
    legacy_token: str | None

    @classmethod
    def read(cls, text: str | None) -> _StoredContext:
        """Read :meth:`Job.stored_context`'s form, or an earlier version's: one object of
        the front end's fields beside ``roles`` (and, earlier still, ``token``). That
        whole object is then the front end's context (its reader takes the fields it
        knows), and the roles and the token are read from it."""
        data: dict[str, Any] = json.loads(text) if text else {}
        token = data.get("token")
        return cls(
            front=str(data["front"]) if "front" in data else text or "",
            role_ids=tuple(int(r) for r in data.get("roles") or ()),
            legacy_token=str(token) if token else None,
        )


def _prepared_of(row: Row) -> PreparedInfo | None:
    if row["input_width"] is None:
        return None
    notes = tuple(images.Note.from_json(n) for n in json.loads(row["notes"] or "[]"))
    fmt = row["input_format"] or "png"
    return PreparedInfo(
        filename=images.clean_filename(row["source_name"], fmt),  # named for the format sent
        format=fmt,
        original_size=(
            int(row["original_width"] or row["input_width"] or 0),
            int(row["original_height"] or row["input_height"] or 0),
        ),
        size=(int(row["input_width"] or 0), int(row["input_height"] or 0)),
        source_format=row["source_format"] or "",
        notes=notes,
        input_bytes=int(row["input_bytes"] or 0),
    )


@dataclass(frozen=True, slots=True)
class JobResult:
    """The upscaled image handed to the front end for delivery.

    The image stays in a file: ``path``, in the queue's spool (``byte_count`` bytes, up to
    :data:`bot.jobs.pipeline.RESULT_MAX_BYTES`). Open it from there (e.g.
    :meth:`bot.images.workers.ImageWorkers.fit`) rather than reading it whole; the queue removes
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
    """Why a job failed, for the user's message.

    ``reason`` is the member's words when the kind alone does not say enough (e.g. which
    check an image failed); the front end then shows it instead of the kind's text.
    """

    kind: FailureKind
    retry_after: float | None = None
    detail: str = ""
    reason: Text | None = field(default=None)


class FrontEnd(Protocol):
    """Implemented once by the front end; called for every job, in any process.

    Progress is for this process's own display of a job: the queue reports it for jobs
    accepted here while they wait in line, and for jobs this process runs. A front end
    that edits a message later (throttled) asks :meth:`bot.jobs.JobQueue.shows` first, so
    that no late edit overwrites a result another process posted.
    """

    def show_progress(self, job: Job, progress: Progress) -> None:
        """The job moved. Called synchronously from the queue: schedule any slow work."""

    async def deliver(self, job: Job, result: JobResult) -> int | None:
        """Post the result; return the message id. Raise :class:`DeliveryFailed` on failure."""

    async def find_delivered(self, job: Job) -> int | None:
        """The id of the job's result message if it was already posted, else None."""

    async def tell_failed(self, job: Job, failure: JobFailure) -> None:
        """Tell the member the job failed (its credits have been refunded)."""

    async def tell_resumed(self, job: Job) -> None:
        """Tell the member their job continues after a restart or a takeover."""

    async def tell_paused(self, job: Job) -> None:
        """Tell the member the bot is stopping; the job continues when it is back."""

    async def stop_showing(self, job_id: str) -> None:
        """This process no longer shows the job (cancelled, or claimed, delivered or
        failed by another process): stop showing its progress and forget it."""


def failure_for(exc: BaseException) -> JobFailure:
    """The failure to record for an exception a job raised."""
    if isinstance(exc, RateLimited):
        return JobFailure(exc.kind, retry_after=exc.retry_after, detail=str(exc))
    if isinstance(exc, InputRefused):
        return JobFailure(exc.kind, detail=exc.text.key, reason=exc.text)
    if isinstance(exc, OneMinError | JobFailed):
        return JobFailure(exc.kind, detail=str(exc))
    return JobFailure(FailureKind.BUG, detail=type(exc).__name__)


def stage_of(value: str) -> Stage:
    try:
        return Stage(value)
    except ValueError:
        return Stage.QUEUED
